"""``lmfuse generate``: fused generation with a pack (PackLLM weights per prompt).

    lmfuse generate "def quicksort(xs):" --explain
    lmfuse generate "Once upon a time" --model smollm2 --model gemma3 --weighting packllm-sim --stream
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmfuse.cli.pack_args import add_pack_arguments, load_pack
from lmfuse.errors import InputError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="generate text with a pack of models fused at test time",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="+", help="one or more prompts")
    add_pack_arguments(parser)
    g = parser.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (prompt i samples with seed + i)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="prompts decoded together, each member's forward passes batched over them (default: 8)")
    parser.add_argument("--explain", action="store_true", help="print each member's weight and NLL first")
    parser.add_argument("--stream", action="store_true", help="print text as it is decoded")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1; got {args.batch_size}")
    pack = load_pack(args)
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                stop=args.stop)
    if args.stream and not args.json:
        for i, prompt in enumerate(args.prompt):
            stream: Any = pack.stream(prompt, seed=args.seed + i, **opts)
            warn_truncated(stream.weights.truncated)
            if args.explain:
                print(stream.weights, file=sys.stderr)
            for piece in stream:
                print(piece, end="", flush=True)
            print()
        return 0
    gens = pack.generate(args.prompt, seed=args.seed, batch_size=args.batch_size, **opts)
    for prompt, gen in zip(args.prompt, gens, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": gen.text, "finish_reason": gen.finish_reason,
                              "n_tokens": gen.n_tokens, "weights": gen.weights.as_dict()}))
            continue
        warn_truncated(gen.weights.truncated)
        if args.explain:
            print(gen.weights, file=sys.stderr)
        print(gen.text)
    return 0


def warn_truncated(truncated: dict[str, int]) -> None:
    """A prompt longer than a member's context is read from its end: say so, per member."""
    for name, n in truncated.items():
        print(f"lmfuse generate: warning: the prompt is too long for {name}; it read only the end "
              f"({n} earlier tokens dropped)", file=sys.stderr)
