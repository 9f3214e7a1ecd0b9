"""One module per screen of `mlbox tui`; `base` holds what every screen shares (header, refresh loop, filter)."""
