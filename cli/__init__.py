"""The `catalens` command: the composition root that wires every package's subcommands."""
