"""Network isolation of sandboxes: the appliance's own nftables rules.

`ruleset` renders them from values (pure), `nft` applies them, `firewall` keeps
them in line with the database as sandboxes come and go. docs/security.md says
what they stop and what they do not.
"""
