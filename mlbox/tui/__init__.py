"""`mlbox tui`: the Textual app that runs the box from a terminal (imported only by `mlbox tui`, never by the CLI)."""
