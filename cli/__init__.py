"""The client side of the `scalebox` command: talk to an appliance from a terminal."""
