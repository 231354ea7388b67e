"""``lmfuse eval``: evaluate members (and, through `build_scorers`, fused packs) on tasks.

    lmfuse eval --pack default --suite bbh8 --limit 100 --out docs/results/members
    lmfuse eval --model smollm2 --task shakespeare:hamlet[5000:13000],stdlib:json.decoder
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmfuse.errors import InputError, TaskError
from lmfuse.eval.scorer import Scorer

if TYPE_CHECKING:  # importing models pulls in torch; keep `lmfuse --help` fast
    from lmfuse.eval.runner import Results
    from lmfuse.eval.sources import DataDir
    from lmfuse.eval.tasks import Task
    from lmfuse.models.member import Member

PACKS = ("default",)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate models on multiple-choice tasks and text (bits per byte)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lmfuse.ensemble.config import ALIGNMENTS, DEFAULT_NLL_NORM, NLL_NORMS
    from lmfuse.ensemble.weighting import DEFAULT_ONLINE_RATE
    from lmfuse.eval.runner import FIT_ON

    what = parser.add_argument_group("models")
    what.add_argument("--model", action="append", default=[], metavar="SPEC",
                      help="a member: zoo name (smollm2, gemma3, qwen-coder), HF dir, .gguf file or hub id; repeatable")
    what.add_argument("--pack", choices=PACKS, help="every member of the pack, each alone")
    what.add_argument("--dtype", default="float32", help="weights dtype (float32, bfloat16, float16)")
    tasks = parser.add_argument_group("tasks")
    tasks.add_argument("--task", action="append", default=[], metavar="NAME",
                       help="mc:NAME (arc_easy, hellaswag, piqa, mmlu, ...), bigbench:NAME, bbh:NAME, hf:ID, jsonl:PATH, "
                            "shakespeare:PLAY, stdlib:MODULE, text:PATH (text tasks take a [start:end] character "
                            "slice); repeatable or comma separated")
    tasks.add_argument("--suite", action="append", default=[], help="a named suite: main, bbh8, dev")
    tasks.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="a BIG-bench checkout or BIG-Bench-Hard files to read bigbench:/bbh: tasks from, before "
                            "any package (default: $LMFUSE_DATA_DIR; see docs/evaluation.md)")
    tasks.add_argument("--strict", action="store_true",
                       help="fail when a task's data cannot be had on this machine, instead of skipping the task")
    tasks.add_argument("--limit", type=int, help="at most N examples (or text chunks) per task, drawn with --seed")
    tasks.add_argument("--shots", type=int, default=0, help="demonstrations before each question (k-shot)")
    tasks.add_argument("--seed", type=int, default=0, help="seed for --limit sampling and demonstrations")
    fused = parser.add_argument_group("fusion (PackLLM)")
    fused.add_argument("--weighting", default="",
                       help="comma-separated weighting strategies to evaluate as fused systems beside each member "
                            "alone, e.g. packllm-opt,packllm-sim,uniform,top1,online, "
                            "or demo-fit, demo-fit-task, choice-fit-task with --shots (one forward pass per member)")
    fused.add_argument("--fusion", default="product", help="fusion rule for the fused systems: product, mixture")
    fused.add_argument("--alignment", default="exact", choices=ALIGNMENTS,
                       help="exact: each member read as the byte-level model its tokens define (the default); "
                            "mined: the paper's code, token level over a seed vocabulary per example with MinED "
                            "maps (weightings uniform, fixed, top1, packllm-sim, packllm-opt)")
    fused.add_argument("--online-rate", type=float, default=DEFAULT_ONLINE_RATE,
                       help="weighting online: the weights' step size per byte (default: %(default)s)")
    fused.add_argument("--fit-on", default=FIT_ON[0], choices=FIT_ON,
                       help="text tasks: fit the fused weights on the chunk before each one (causal, what generation "
                            "gets; the first chunk is not scored; the default) or on the chunk itself (PackLLM's "
                            "transductive set-up)")
    fused.add_argument("--nll-norm", default=DEFAULT_NLL_NORM, choices=NLL_NORMS,
                       help="NLL normalisation for weights and the seed member (default: %(default)s)")
    parser.add_argument("--window", type=int, default=2048, help="rolling-window tokens for bits per byte")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="multiple-choice examples read per forward pass (default: %(default)s; results do "
                             "not depend on it)")
    parser.add_argument("--out", type=Path, help="directory for results.json, report.md and plot.png")
    parser.add_argument("--resume", action="store_true",
                        help="keep the tasks an earlier, stopped run already finished in --out (same settings)")


def load_members(args: argparse.Namespace) -> list[Member]:
    """The members named by ``--model`` and ``--pack``, loaded once each."""
    from lmfuse.models.load import load_member

    specs = list(args.model)
    if args.pack == "default":
        from lmfuse.models import zoo

        specs += [name for name in zoo.DEFAULT_PACK if name not in specs]
    if not specs:
        raise InputError("no model to evaluate: give --model SPEC (repeatable) or --pack default")
    members = []
    for spec in specs:
        t0 = time.perf_counter()
        members.append(load_member(spec, dtype=args.dtype))
        print(f"loaded {spec} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return members


def build_scorers(args: argparse.Namespace, members: list[Member]) -> list[Scorer]:
    """Each member alone; with ``--weighting``, one pack scorer instead, which reports every member
    alone *and* each fused strategy from the same forward passes."""
    from lmfuse.eval.member_scorer import MemberScorer

    weightings = [w.strip() for w in args.weighting.split(",") if w.strip()]
    if not weightings:
        return [MemberScorer(m, window=args.window) for m in members]
    from lmfuse.ensemble import WEIGHTINGS, Pack
    from lmfuse.eval.pack_scorer import pack_scorer

    for name in weightings:
        WEIGHTINGS.get(name)  # unknown names fail with suggestions before any scoring
    pack = Pack(members, weighting=weightings[0], fusion=args.fusion, nll_norm=args.nll_norm,
                online_rate=args.online_rate, alignment=args.alignment)
    return [pack_scorer(pack, weightings, window=args.window)]


def command_line(args: argparse.Namespace) -> str:
    """The ``lmfuse eval`` command that reproduces this run (recorded in the results)."""
    argv = ["lmfuse", "eval"]
    for spec in args.model:
        argv += ["--model", spec]
    if args.pack:
        argv += ["--pack", args.pack]
    for value in args.suite:
        argv += ["--suite", value]
    for value in args.task:
        argv += ["--task", value]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    if args.weighting:
        argv += ["--weighting", args.weighting, "--fusion", args.fusion, "--nll-norm", args.nll_norm,
                 "--fit-on", args.fit_on]
        if args.alignment != "exact":
            argv += ["--alignment", args.alignment]
        if "online" in args.weighting:
            argv += ["--online-rate", str(args.online_rate)]
    argv += ["--shots", str(args.shots), "--seed", str(args.seed), "--window", str(args.window)]
    if args.dtype != "float32":
        argv += ["--dtype", args.dtype]
    if args.out:
        argv += ["--out", str(args.out)]
    return shlex.join(argv)


def earlier_results(args: argparse.Namespace) -> Results | None:
    """With ``--resume``, the results an earlier run left in ``--out`` (None when it left none)."""
    from lmfuse.eval.runner import Results

    if not args.resume:
        return None
    if args.out is None:
        raise InputError("--resume needs --out: the directory where the earlier run wrote results.json")
    path = args.out / "results.json"
    if not path.is_file():
        print(f"--resume: no {path} yet; starting from the first task", file=sys.stderr)
        return None
    previous = Results.load(path)
    print(f"--resume: {len(previous.tasks)} finished task(s) in {path} are kept", file=sys.stderr)
    return previous


def load_tasks(args: argparse.Namespace, names: list[str], data_dir: DataDir | None) -> tuple[list[Task], dict[str, str]]:
    """Every task that can be had, and ``{name: why}`` for those skipped. Names are all checked first,
    so a typo fails before anything is downloaded; ``--strict`` makes an unavailable task an error."""
    from lmfuse.eval.sources import TaskUnavailableError
    from lmfuse.eval.tasks import check_task_name, load_task

    for name in names:
        check_task_name(name, data_dir)
    tasks: list[Task] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            tasks.append(load_task(name, data_dir=data_dir))  # bad files fail before models load
        except TaskUnavailableError as exc:
            if args.strict:
                raise
            print(f"lmfuse eval: skipping {name}: {exc}", file=sys.stderr)
            skipped[name] = str(exc)
    if not tasks:
        raise TaskError(f"none of the {len(names)} task(s) can be had on this machine (see the messages above)")
    return tasks, skipped


def check_demonstrations(args: argparse.Namespace, tasks: list[Task]) -> None:
    """A weighting fitted on demonstrations' answers needs k-shot multiple-choice tasks: say so before any
    model loads."""
    from lmfuse.ensemble.weighting import FITS_ON_DEMONSTRATIONS

    chosen = [w.strip() for w in args.weighting.split(",") if w.strip() in FITS_ON_DEMONSTRATIONS]
    if not chosen:
        return
    if args.shots < 1:
        raise InputError(f"--weighting {chosen[0]} fits the members' weights on the answers of solved "
                         f"demonstrations: give --shots K (K >= 1 demonstrations per question; got --shots {args.shots})")
    text = [t.name for t in tasks if t.kind != "mc"]
    if text:
        raise InputError(f"--weighting {chosen[0]} needs multiple-choice tasks with demonstrations; {', '.join(text)} "
                         "is text (bits per byte): evaluate it in a separate run without it")


def run(args: argparse.Namespace) -> int:
    from lmfuse.eval.combined import CombinedScorer
    from lmfuse.eval.report import markdown, write_report
    from lmfuse.eval.runner import evaluate
    from lmfuse.eval.sources import PRECEDENCE, user_data_dir
    from lmfuse.eval.tasks import expand

    names = expand(args.task, args.suite)
    if not names:
        raise InputError("no task to run: give --task NAME (repeatable, comma separated) or --suite main|bbh8|dev")
    if args.limit is not None and args.limit <= 0:
        raise InputError(f"--limit must be a positive number of examples, got {args.limit}")
    if args.shots < 0:
        raise InputError(f"--shots must be >= 0, got {args.shots}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {str(args.out)!r} is a file; give a directory for results.json, report.md and plot.png")
    data_dir = user_data_dir(args.data_dir)
    tasks, skipped = load_tasks(args, names, data_dir)
    check_demonstrations(args, tasks)
    previous = earlier_results(args)
    scorer = CombinedScorer(build_scorers(args, load_members(args)))
    settings = {"command": command_line(args), "skipped_tasks": skipped,
                "data_dir": data_dir.describe() if data_dir else None, "data_precedence": PRECEDENCE}
    results = evaluate(
        scorer, tasks, limit=args.limit, shots=args.shots, seed=args.seed, provenance=scorer.provenance(),
        extra_settings=settings, fit_on=args.fit_on, batch_size=args.batch_size,
        on_task=(lambda partial: write_report(partial, args.out)) if args.out else None, resume=previous,
    )
    if args.out:
        paths = write_report(results, args.out)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    print(markdown(results))
    return 0
