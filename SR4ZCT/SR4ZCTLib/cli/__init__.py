"""The `sr4zct` command line (argparse only): one module per command family, typed values, one `error:` line."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
