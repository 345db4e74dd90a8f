"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class NarError(Exception):
    """A problem the user can fix (bad input, missing model, mismatched artifacts)."""
