"""`python -m cli ...` runs the `scalebox` command (handy before the console script is installed)."""

from cli.main import main

main(prog_name="scalebox")
