"""The stage functions both training methods share: extract, align and combine over *views*.

A view is a set of rows that go through extract -> align -> combine together, under its own directory:
FuseLLM has one (the corpus, ``fuse/fusellm.py``), ProFuser several (the reference responses, and the
replies each candidate won: ``fuse/profuser.py``). Each function skips what is finished and resumes what
is not (``fuse/sharded.py``); which processes call it is the method's (``Run.stage``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmfuse.errors import InputError
from lmfuse.fuse import store
from lmfuse.fuse.recipe import MemberSpec

if TYPE_CHECKING:
    from lmfuse.fuse.pipeline import Run


@dataclass(frozen=True)
class View:
    """Rows that go through extract -> align -> combine together, under ``base``.

    ``members`` are extracted (target first), ``candidates`` aligned and fused. ``contexts`` (member
    slug -> one text per row) is what each member reads before a row; ``keys[r]`` is the example index
    of row r (None: the row index itself).
    """

    base: Path
    rows: list[str]
    members: list[MemberSpec]
    candidates: list[MemberSpec]
    contexts: dict[str, list[str]] | None = None
    keys: list[int] | None = None


def require(directory: Path, stage: str) -> None:
    """Refuse to go on from a stage directory that is not finished, naming the stage to run."""
    if not store.stage_done(directory):
        raise InputError(f"{str(directory)!r} is not finished; run the {stage!r} stage first")


def extract(run: Run[Any], views: Sequence[View]) -> None:
    """Every member's top-k over each view's rows; this process takes its share of the shards."""
    from lmfuse.fuse.extract import extract_member

    processes, index = run.split
    cfg = run.recipe.extract
    for view in views:
        for spec in view.members:
            out = view.base / "extract" / spec.slug
            if store.stage_done(out):
                continue
            extract_member(run.member(spec), view.rows, out, top_k=cfg.top_k, batch_size=cfg.batch_size,
                           rows_per_shard=cfg.rows_per_shard, num_shards=processes, shard_index=index,
                           progress=run.progress,
                           contexts=None if view.contexts is None else view.contexts[spec.slug])


def align(run: Run[Any], views: Sequence[View]) -> None:
    """Each candidate's extraction moved onto the target's tokens and vocabulary, per view."""
    from lmfuse.fuse.transfer import Aligner, align_source

    cfg = run.recipe.align
    target = run.recipe.target
    for view in views:
        tgt_dir = view.base / "extract" / target.slug
        require(tgt_dir, "extract")
        tgt = run.member(target)
        for spec in view.candidates:
            out = view.base / "align" / spec.slug
            if store.stage_done(out):
                continue
            src_dir = view.base / "extract" / spec.slug
            require(src_dir, "extract")
            src = run.member(spec)
            aligner = Aligner(src.tokenizer, tgt.tokenizer, src.logits_width, tgt.logits_width, vocab=cfg.vocab,
                              sequence=cfg.sequence)
            align_source(src_dir, tgt_dir, out, view.rows, aligner, tgt.logits_width, fallback=cfg.fallback,
                         progress=run.progress)


def combine(run: Run[Any], views: Sequence[View]) -> None:
    """The aligned candidates fused into one teacher per target token, per view."""
    from lmfuse.fuse.combine import combine as combine_view

    for view in views:
        out = view.base / "combine"
        if store.stage_done(out):
            continue
        dirs = [view.base / "align" / s.slug for s in view.candidates]
        for d in dirs:
            require(d, "align")
        combine_view(dirs, view.base / "extract" / run.recipe.target.slug, out, run.recipe.combine,
                     progress=run.progress)
