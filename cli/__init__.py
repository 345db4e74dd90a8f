"""The `nar` command line: a thin Typer layer over the `nar` library."""
