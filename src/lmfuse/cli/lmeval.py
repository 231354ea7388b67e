"""``lmfuse lm-eval ...``: lm-evaluation-harness's own CLI, with lmfuse registered as its model ``lmfuse``.

    lmfuse lm-eval run --model lmfuse --model_args pack=default weighting=packllm-opt \\
        --tasks arc_easy --limit 20 --output_path out/lm-eval

Every argument after ``lm-eval`` goes to lm-eval unchanged. With ``--output_path DIR``, each request's member
weights are written to ``DIR/lmfuse-weights.jsonl`` (unless ``weights_out=`` is among the model arguments).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmfuse.errors import InputError

WEIGHTS_FILE = "lmfuse-weights.jsonl"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm-eval", help="run lm-evaluation-harness with lmfuse as its model 'lmfuse'",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="lm-eval's arguments (lm-eval --help)")
    p.set_defaults(func=run)


def with_weights_out(argv: list[str]) -> list[str]:
    """``argv`` with ``weights_out=<output_path>/lmfuse-weights.jsonl`` added to the model arguments."""
    out = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--output_path", "-o")), None)
    if out is None or any(a.startswith("weights_out=") or ",weights_out=" in a for a in argv):
        return argv
    extra = f"weights_out={Path(out) / WEIGHTS_FILE}"
    for i, a in enumerate(argv):
        if a in ("--model_args", "-a"):
            return [*argv[: i + 1], extra, *argv[i + 1 :]]
    return [*argv, "--model_args", extra]


def run(args: argparse.Namespace) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate

        import lmfuse.eval.harness  # noqa: F401  (registers the model "lmfuse" with lm-eval)
    except ModuleNotFoundError as exc:
        raise InputError(f"lm-evaluation-harness is not installed ({exc.name}); "
                         "pip install 'lmfuse[lm-eval]'") from None
    argv = with_weights_out(list(args.lm_eval_args))
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as exc:  # lm-eval's argparse exits on --help and on bad arguments
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    finally:
        sys.argv = saved
    return 0
