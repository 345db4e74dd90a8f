"""nar: non-autoregressive seq2seq on a frozen LLM through proto-tokens.

Heavy libraries (torch, transformers) are imported by the submodules, not here, so that
`import nar` and the CLI's `--help` stay instant.
"""

__version__ = "0.1.0"

from nar.errors import NarError  # noqa: E402

__all__ = ["NarError", "__version__"]
