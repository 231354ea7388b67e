"""``lmfuse score``: fused log-likelihood of continuations given a context (multiple choice).

    lmfuse score --context "The capital of France is" --continuation " Paris" --continuation " Rome"
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmfuse.cli.pack_args import add_pack_arguments, load_pack
from lmfuse.errors import InputError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("score", help="score continuations with each member and the fused pack",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", required=True)
    parser.add_argument("--continuation", action="append", default=[], required=True,
                        help="a candidate continuation; repeatable")
    add_pack_arguments(parser)
    parser.add_argument("--strategies", help="comma-separated weightings to score side by side "
                                             "(default: --weighting)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmfuse.eval.pack_scorer import pack_scorer

    strategies = [s for s in (args.strategies or args.weighting).split(",") if s]
    if not strategies:
        raise InputError("--strategies is empty")
    pack = load_pack(args)
    scorer = pack_scorer(pack, strategies)
    for member in pack.members:  # a long context is read from its end: say so
        longest = max(len(member.encode(c).ids) for c in args.continuation)
        dropped = len(member.encode(args.context).ids) - (member.context_length - 1 - longest)
        if dropped > 0:
            print(f"lmfuse score: warning: the context is too long for {member.name}; it read only the end "
                  f"({dropped} earlier tokens dropped)", file=sys.stderr)
    scores = scorer.loglikelihood(args.context, args.continuation)
    if args.json:
        print(json.dumps({"context": args.context, "continuations": args.continuation, "loglikelihood": scores}))
        return 0
    width = max(len(s) for s in scores)
    print(f"{'system':<{width}}  " + "  ".join(f"{c!r:>14}" for c in args.continuation))
    for system, values in scores.items():
        best = max(range(len(values)), key=values.__getitem__)
        cells = [f"{v:13.3f}{'*' if j == best else ' '}" for j, v in enumerate(values)]
        print(f"{system:<{width}}  " + "  ".join(cells))
    print("(natural-log likelihood of each continuation; * = the system's choice)", file=sys.stderr)
    return 0
