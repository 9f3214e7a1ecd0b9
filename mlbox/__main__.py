"""`python -m mlbox` runs the CLI."""

from mlbox.cli.main import run

run()
