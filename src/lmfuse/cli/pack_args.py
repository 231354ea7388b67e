"""Pack options shared by ``lmfuse generate`` and ``lmfuse score`` (and usable by ``eval``/``serve``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from lmfuse.errors import InputError


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    from lmfuse.ensemble import FUSIONS, WEIGHTINGS
    from lmfuse.ensemble.config import ALIGNMENTS, DEFAULT_NLL_NORM, DTYPES, NLL_NORMS
    from lmfuse.ensemble.weighting import DEFAULT_ONLINE_RATE

    g = parser.add_argument_group("pack")
    g.add_argument("--pack", choices=("default",), help="the default pack (used when no --model is given)")
    g.add_argument("--model", action="append", default=[], metavar="SPEC",
                   help="a member: zoo name, HF directory, .gguf file or hub id, optionally followed by "
                        ",device=cuda:1 ,dtype=bfloat16 ,name=NAME (e.g. qwen-coder,device=cuda:1); repeatable")
    g.add_argument("--weighting", default="packllm-opt",
                   help=f"weighting strategy: {', '.join(WEIGHTINGS.names())} (default: %(default)s)")
    g.add_argument("--weights", help="comma-separated member weights for --weighting fixed")
    g.add_argument("--tau", type=float, default=1.0, help="temperature of packllm-sim (default: 1)")
    g.add_argument("--online-rate", type=float, default=DEFAULT_ONLINE_RATE,
                   help="weighting online: the weights' step size per byte, in (0, 1) (default: %(default)s)")
    g.add_argument("--fusion", default="product", help=f"fusion rule: {', '.join(FUSIONS.names())}")
    g.add_argument("--alignment", default="exact", choices=ALIGNMENTS,
                   help="how members with different tokenizers meet: exact (each read as the byte-level model its "
                        "tokens define) or mined (the paper's code: a seed vocabulary per example, MinED maps onto "
                        "it; scoring only) (default: %(default)s)")
    g.add_argument("--seed-member", help="fix the member whose tokens generation emits (default: the largest weight)")
    g.add_argument("--nll-norm", default=DEFAULT_NLL_NORM, choices=NLL_NORMS,
                   help="NLL normalisation for NLL-based weights and seed ties (default: %(default)s)")
    g.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weights dtype of members that do not name one (default: %(default)s)")
    g.add_argument("--parallel", choices=("auto", "on", "off"), default="auto",
                   help="run the members' forward passes at the same time, a worker thread each (auto: when they "
                        "are on more than one device; default: %(default)s)")


def pack_config(args: argparse.Namespace) -> Any:
    """The `PackConfig` the pack flags describe (validated: a bad value is an error naming it)."""
    from lmfuse.ensemble import PackConfig

    fixed = None
    if args.weights:
        try:
            fixed = [float(x) for x in args.weights.split(",")]
        except ValueError:
            raise InputError(f"--weights must be comma-separated numbers; got {args.weights!r}") from None
    if args.weighting == "fixed" and fixed is None:
        raise InputError("--weighting fixed needs --weights w1,w2,... (one per member)")
    return PackConfig.of(members=list(args.model), weighting=args.weighting, fusion=args.fusion,
                         alignment=args.alignment,
                         seed_member=args.seed_member, nll_norm=args.nll_norm, dtype=args.dtype, tau=args.tau,
                         online_rate=args.online_rate,
                         weights=fixed, parallel={"auto": None, "on": True, "off": False}[args.parallel])


def load_pack(args: argparse.Namespace) -> Any:
    from lmfuse.ensemble import Pack

    config = pack_config(args)
    t0 = time.perf_counter()
    pack = Pack.load(config=config)
    print(f"loaded {', '.join(pack.names)} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return pack
