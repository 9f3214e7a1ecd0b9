"""Benchmarks: mlbox operations timed against their floors in the same run (`mlbox bench ...`)."""
