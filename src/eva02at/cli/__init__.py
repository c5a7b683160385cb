"""The ``eva02at`` command and its subcommands (the top layer)."""
