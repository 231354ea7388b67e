"""The loop every stage shares: sharded, resumable, with a manifest written last.

A stage writes ``num_shards`` shard files under its directory. Shard s belongs to the process with
``s % num_processes == process_index`` (``split``), so several processes (``accelerate launch``, torchrun,
or ``--num-shards/--shard-index``) share one stage; a stage run by the main process alone uses the default
split ``(1, 0)``. Every shard is written atomically, so a shard file that exists is complete and is
skipped: a killed run resumes at its first missing shard. ``config.json`` refuses a resume with other
settings (``store.check_config``). The manifest, which says ``complete``, is written by whichever process
finds every shard present at its end (the last to finish sees all of them; several may write the same
manifest at once, atomically).

Which process runs a stage at all, and the barriers between stages, are the pipeline's (``Run.stage``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lmfuse.errors import InputError
from lmfuse.fuse import store


def sharded_stage(out_dir: Path, config: dict[str, Any], num_shards: int, make_shard: Callable[[int, Path], None],
                  *, shard_file: Callable[[Path, int], Path] = store.shard_path, split: tuple[int, int] = (1, 0),
                  desc: str | None = None, progress: bool = True,
                  manifest: Callable[[], dict[str, Any]] | None = None) -> bool:
    """Make this process's missing shards and, once every shard exists, the manifest. Returns whether the
    stage is complete.

    ``make_shard(s, path)`` writes shard s atomically at ``path`` (``shard_file(out_dir, s)``).
    ``desc``: a progress bar over shards with this label (None: the caller shows its own progress).
    ``manifest()``: extra manifest entries, computed once every shard exists (e.g. a summary of them).
    The manifest holds ``config``, ``num_shards``, the extra entries and ``complete: true``.
    """
    processes, index = split
    if not 0 <= index < processes:
        raise InputError(f"shard_index {index} is outside 0..{processes - 1}")
    store.check_config(out_dir, config)
    paths = [shard_file(out_dir, s) for s in range(num_shards)]
    todo = [s for s in range(num_shards) if s % processes == index and not paths[s].is_file()]
    for s in tqdm(todo, desc=desc, unit="shard", disable=not progress or desc is None):
        make_shard(s, paths[s])
    if not all(p.is_file() for p in paths):
        return False
    extra = manifest() if manifest is not None else {}
    store.write_json(out_dir / "manifest.json", {**config, "num_shards": num_shards, **extra, "complete": True})
    return True
