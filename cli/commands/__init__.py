"""The `scalebox` subcommands, one module per group."""
