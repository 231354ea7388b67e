"""The ``lmfuse`` command: one entry point, one small module per subcommand.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func=run`` (``run(args) -> int``). Errors a user can act on (``LmfuseError``) are printed as one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lmfuse.errors import LmfuseError

# Subcommand modules, in the order `lmfuse --help` lists them.
COMMANDS = ("zoo", "eval", "score", "generate", "align", "fuse", "serve", "lmeval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmfuse",
        description="Fuse language models with different tokenizers: at test time (PackLLM) and by training (FuseLLM, ProFuser).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"lmfuse.cli.{name}").register(sub)
    return parser


def check_utf8(args: argparse.Namespace) -> None:
    """Refuse arguments that are not valid UTF-8 before anything runs: Python hands them over with the bad
    bytes as lone surrogates (``\\udcff``), which no tokenizer, file name or JSON writer accepts."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    bad = text[exc.start].encode("utf-8", "surrogateescape")
                    raise LmfuseError(f"argument {name.replace('_', '-')} is not valid UTF-8 (byte 0x{bad.hex()} at "
                                      f"position {exc.start}); pass text in UTF-8") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_utf8(args)
        return int(args.func(args) or 0)
    except LmfuseError as exc:  # UnknownNameError too
        print(f"lmfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmfuse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
