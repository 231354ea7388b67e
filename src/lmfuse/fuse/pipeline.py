"""One recipe, resumable stages: FuseLLM (extract -> align -> combine -> train) and ProFuser
(generate -> reward -> the same stages on two views -> train with a progressive schedule).

FuseLLM layout under ``recipe.output_dir``::

    recipe.resolved.yaml          the resolved recipe (+ lmfuse version)
    extract/<member>/             top-k of every member in its own tokenization (target included)
    align/<member>/               each candidate in the target's tokenization and vocabulary
    combine/                      the fused teacher (one top-k per target token)
    train/model/                  the trained target (HF directory: weights + tokenizer)

ProFuser layout (``method: profuser``; instruction data)::

    generate/<candidate>/         each candidate's reply to every prompt (its own chat template)
    reward/                       every reward's scores, the votes and the winner of each example
    train-mode/{extract,align,combine}/          the reference responses; MinCE teacher (FuseLLM)
    infer-mode/<winner>/{extract,align,combine}/ the replies <winner> won; its own top-k as teacher
    summary.json                  teacher wins per candidate in each mode, mean reward scores, lengths
    train/model/                  trained on (inference-mode row, training-mode row) pairs

Extraction, alignment and fusion run per *view* (a set of rows, the members that read them, and the
candidates fused into the teacher) with the unchanged FuseLLM stage functions; in the ProFuser views a
row is a response and each member reads its own rendered prompt first (``fuse/instruct.py``).

A stage whose manifest says ``complete`` is skipped; an unfinished one resumes at its first missing
shard (train: at its latest checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lmfuse import atomic
from lmfuse.errors import InputError
from lmfuse.fuse import store
from lmfuse.fuse.corpus import corpus_rows
from lmfuse.fuse.instruct import Example
from lmfuse.fuse.recipe import FuseRecipe, MemberSpec, to_dict
from lmfuse.models.member import Member

STAGES = ("extract", "align", "combine", "train")
PROFUSER_STAGES = ("generate", "reward", "extract", "align", "combine", "train")


def stages_of(recipe: FuseRecipe) -> tuple[str, ...]:
    return PROFUSER_STAGES if recipe.method == "profuser" else STAGES


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


def save_resolved(recipe: FuseRecipe) -> Path:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("lmfuse")
    except PackageNotFoundError:
        ver = "unknown"
    recipe.out.mkdir(parents=True, exist_ok=True)
    path = recipe.out / "recipe.resolved.yaml"
    text = yaml.safe_dump({"lmfuse_version": ver, **to_dict(recipe)}, sort_keys=False)
    atomic.write_text(path, text)
    return path


# The first stage each recipe section shapes (None: no output depends on it).
SHAPES: dict[str, str | None] = {
    "name": None, "output_dir": None, "method": "generate", "target": "generate", "sources": "generate",
    "data": "generate", "generate": "generate", "rewards": "reward", "vote": "reward", "extract": "extract",
    "align": "align", "combine": "combine", "train": "train", "schedule": "train",
}
ORDER = ("generate", "reward", "extract", "align", "combine", "train")


def changed_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved recipes (plain data)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in changed_settings(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_unchanged(recipe: FuseRecipe) -> None:
    """Refuse to resume a run whose finished or started stages were made with other settings: the
    pipeline would otherwise keep their outputs and report the new settings (naming each changed one)."""
    path = recipe.out / "recipe.resolved.yaml"
    if not path.is_file():
        return
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # unreadable: nothing to compare with; the stages' own config checks still apply
    if not isinstance(old, dict):
        return
    old.pop("lmfuse_version", None)
    new = to_dict(recipe)
    made = {p.name for p in recipe.out.rglob("*") if p.name in ORDER and p.is_dir()}  # one walk of the outputs
    stale = []
    for key in changed_settings(old, new):
        first = SHAPES.get(key.split(".")[0], "generate")
        if first is not None and any(stage in made for stage in ORDER[ORDER.index(first):]):
            stale.append(key)
    if stale:
        def value(data: Any, key: str) -> Any:
            for part in key.split("."):
                data = data.get(part) if isinstance(data, dict) else None
            return data

        detail = "; ".join(f"{k}: {value(old, k)!r} then, {value(new, k)!r} now" for k in stale[:6])
        raise InputError(f"{str(recipe.out)!r} holds stages made with other settings ({detail}); resuming would "
                         "keep their outputs. Use another output_dir, or delete the stages these settings shape")


def rows_of(recipe: FuseRecipe) -> list[str]:
    d = recipe.data
    end = None if d.limit is None else d.offset + d.limit
    rows = corpus_rows(d.path, d.text_field, d.split, d.max_chars, end)[d.offset:]
    if not rows:
        raise InputError(f"corpus {d.path!r} has no non-empty rows")
    return rows


def examples_of(recipe: FuseRecipe) -> list[Example]:
    from lmfuse.fuse.instruct import load_examples

    d = recipe.data
    examples = load_examples(d.path, d.prompt_field, d.response_field, d.split, d.max_chars, d.offset, d.limit)
    if not examples:
        raise InputError(f"instruction data {d.path!r} has no usable example (non-empty prompt and response "
                         f"of at most data.max_chars={d.max_chars} characters together, after offset {d.offset})")
    return examples


def members_of(recipe: FuseRecipe) -> list[MemberSpec]:
    """Target first, then the sources."""
    return [recipe.target, *recipe.sources]


class Run:
    """A recipe's stages over lazily loaded members (``members`` may pre-supply loaded ones by slug)."""

    def __init__(self, recipe: FuseRecipe, members: dict[str, Member] | None = None, progress: bool = True,
                 num_shards: int | None = None, shard_index: int | None = None) -> None:
        self.recipe = recipe
        self._members = dict(members or {})
        self.progress = progress
        self._rows: list[str] | None = None
        self._examples: list[Example] | None = None
        self._prompts: dict[str, list[str]] = {}
        self.num_shards = num_shards
        self.shard_index = shard_index

    @property
    def rows(self) -> list[str]:
        if self._rows is None:
            self._rows = rows_of(self.recipe)
        return self._rows

    @property
    def examples(self) -> list[Example]:
        if self._examples is None:
            self._examples = examples_of(self.recipe)
        return self._examples

    def template(self, spec: MemberSpec) -> str | None:
        from lmfuse.fuse.instruct import chat_template

        return chat_template(self.member(spec).tokenizer, spec.chat_template)

    def prompts(self, spec: MemberSpec) -> list[str]:
        """Every example's prompt rendered with ``spec``'s own chat template."""
        if spec.slug not in self._prompts:
            from lmfuse.fuse.instruct import render_prompt

            tok, template = self.member(spec).tokenizer, self.template(spec)
            self._prompts[spec.slug] = [render_prompt(tok, e.prompt, self.recipe.data.system, template)
                                        for e in self.examples]
        return self._prompts[spec.slug]

    def member(self, spec: MemberSpec) -> Member:
        if spec.slug not in self._members:
            from lmfuse.fuse.dist import process_state
            from lmfuse.fuse.members import resolve_member

            self._members[spec.slug] = resolve_member(spec, device=str(process_state().device))
        return self._members[spec.slug]

    def path(self, *parts: str) -> Path:
        return self.recipe.out.joinpath(*parts)

    def views(self) -> list[View]:
        """FuseLLM: the corpus. ProFuser: the training-mode view, then one inference-mode view per winner."""
        if self.recipe.method != "profuser":
            return [View(self.recipe.out, self.rows, members_of(self.recipe), self.candidates())]
        members = members_of(self.recipe)
        views = [View(self.path("train-mode"), [e.response for e in self.examples], members, self.candidates(),
                      {m.slug: self.prompts(m) for m in members})]
        replies = self.replies()
        target = self.recipe.target
        for spec, keys in self.winner_keys().items():
            readers = [target] if spec.slug == target.slug else [target, spec]
            views.append(View(self.path("infer-mode", spec.slug), [replies[spec.slug][i] for i in keys], readers,
                              [spec], {m.slug: [self.prompts(m)[i] for i in keys] for m in readers}, keys))
        return views

    def extract(self) -> None:
        from lmfuse.fuse.extract import extract_member, process_split

        n, i = (self.num_shards, self.shard_index) if self.num_shards else process_split()
        cfg = self.recipe.extract
        for view in self.views():
            for spec in view.members:
                out = view.base / "extract" / spec.slug
                if store.stage_done(out):
                    continue
                extract_member(self.member(spec), view.rows, out, top_k=cfg.top_k, batch_size=cfg.batch_size,
                               rows_per_shard=cfg.rows_per_shard, num_shards=n or 1, shard_index=i or 0,
                               progress=self.progress,
                               contexts=None if view.contexts is None else view.contexts[spec.slug])

    def candidates(self) -> list[MemberSpec]:
        specs = list(self.recipe.sources)
        return [self.recipe.target, *specs] if self.recipe.combine.include_target else specs

    def align(self) -> None:
        for view in self.views():
            self._align_view(view)

    def _align_view(self, view: View) -> None:
        from lmfuse.fuse.align import Aligner, align_source

        target = self.recipe.target
        tgt_dir = view.base / "extract" / target.slug
        self._require(tgt_dir, "extract")
        tgt = self.member(target)
        for spec in view.candidates:
            out = view.base / "align" / spec.slug
            if store.stage_done(out):
                continue
            src_dir = view.base / "extract" / spec.slug
            self._require(src_dir, "extract")
            src = self.member(spec)
            aligner = Aligner(src.tokenizer, tgt.tokenizer, src.logits_width, tgt.logits_width,
                              vocab=self.recipe.align.vocab, sequence=self.recipe.align.sequence)
            align_source(src_dir, tgt_dir, out, view.rows, aligner, tgt.logits_width,
                         fallback=self.recipe.align.fallback, progress=self.progress)

    def combine(self) -> None:
        from lmfuse.fuse.combine import combine

        for view in self.views():
            out = view.base / "combine"
            if store.stage_done(out):
                continue
            dirs = [view.base / "align" / s.slug for s in view.candidates]
            for d in dirs:
                self._require(d, "align")
            cfg = self.recipe.combine
            combine(dirs, view.base / "extract" / self.recipe.target.slug, out, function=cfg.function,
                    granularity=cfg.granularity, ce_norm=cfg.ce_norm, progress=self.progress)
        if self.recipe.method == "profuser":
            from lmfuse.fuse.profuser import mode_summary

            summary = mode_summary(self.path("reward"), self.path("train-mode", "combine"),
                                   [s.slug for s in self.candidates()])
            store.write_json(self.path("summary.json"), summary)

    # ProFuser's inference mode -------------------------------------------------------------------

    def _profuser_only(self, stage: str) -> None:
        if self.recipe.method != "profuser":
            raise InputError(f"the {stage!r} stage belongs to method 'profuser'; this recipe's method is "
                             f"{self.recipe.method!r}")

    def generate(self) -> None:
        """Every candidate answers every prompt (shards split over processes like extraction)."""
        from lmfuse.fuse.extract import process_split
        from lmfuse.fuse.generate import generate_member

        self._profuser_only("generate")
        n, i = (self.num_shards, self.shard_index) if self.num_shards else process_split()
        for spec in self.candidates():
            out = self.path("generate", spec.slug)
            if store.stage_done(out):
                continue
            generate_member(self.member(spec), self.prompts(spec), out, self.recipe.generate,
                            templated=self.template(spec) is not None, num_shards=n or 1, shard_index=i or 0,
                            progress=self.progress)

    def replies(self) -> dict[str, list[str]]:
        """Each candidate's replies (candidate order = the vote's tie-break order)."""
        from lmfuse.fuse.generate import read_generations

        out = {}
        for spec in self.candidates():
            directory = self.path("generate", spec.slug)
            self._require(directory, "generate")
            out[spec.slug] = read_generations(directory, self.prompts(spec))
        return out

    def reward(self) -> None:
        from lmfuse.fuse.profuser import judge

        self._profuser_only("reward")
        out = self.path("reward")
        if store.stage_done(out):
            return
        judge(self.examples, self.replies(), out, self.recipe.rewards, self.recipe.generate.rows_per_shard,
              progress=self.progress, rule=self.recipe.vote)

    def winner_keys(self) -> dict[MemberSpec, list[int]]:
        """The examples each candidate won whose reply is not empty (candidates that won none are left out)."""
        from lmfuse.fuse.profuser import read_winners

        self._require(self.path("reward"), "reward")
        winners = read_winners(self.path("reward"), num_examples=len(self.examples))
        replies = self.replies()
        keys = {spec: [i for i, w in enumerate(winners) if w == spec.slug and replies[spec.slug][i].strip()]
                for spec in self.candidates()}
        return {spec: k for spec, k in keys.items() if k}

    def train(self) -> Path:
        from lmfuse.fuse.train import train

        final = self.path("train", "model")
        if (final / "config.json").is_file():
            return final
        if self.recipe.method == "profuser":
            return self._train_profuser()
        self._require(self.path("combine"), "combine")
        # Sources are not needed any more: free their memory before the target's copy is trained.
        self._members = {k: v for k, v in self._members.items() if k == self.recipe.target.slug}
        return train(self.member(self.recipe.target), self.path("combine"), self.path("train"),
                     self.recipe.train, progress=self.progress)

    def _train_profuser(self) -> Path:
        """Pairs (inference-mode row, training-mode row) per example, weighted by the recipe's schedule."""
        from lmfuse.fuse.instruct import end_of_turn_id
        from lmfuse.fuse.profuser import with_turn
        from lmfuse.fuse.schedule import mode_weights
        from lmfuse.fuse.train import FusedRow, load_fused_by_key, train

        target = self.recipe.target
        self._require(self.path("train-mode", "combine"), "combine")
        train_rows = load_fused_by_key(self.path("train-mode", "combine"))
        infer_rows: dict[int, FusedRow] = {}
        for spec, keys in self.winner_keys().items():
            directory = self.path("infer-mode", spec.slug, "combine")
            self._require(directory, "combine")
            for r, row in load_fused_by_key(directory).items():
                infer_rows[keys[r]] = row
        self._members = {k: v for k, v in self._members.items() if k == target.slug}
        member = self.member(target)
        end = end_of_turn_id(member.tokenizer, self.template(target) is not None)
        contexts = [np.asarray(member.encode(p).ids, dtype=np.int64) for p in self.prompts(target)]
        examples = [(with_turn(infer_rows.get(i), contexts[i], end), with_turn(train_rows[i], contexts[i], end))
                    for i in range(len(self.examples))]
        return train(member, examples, self.path("train"), self.recipe.train, progress=self.progress,
                     modes=("infer", "train"), weights=mode_weights(self.recipe.schedule))

    def run(self, stages: Sequence[str] | None = None) -> Path:
        valid = stages_of(self.recipe)
        stages = valid if stages is None else stages
        unknown = [s for s in stages if s not in valid]
        if unknown:
            from lmfuse.registry import suggest

            raise InputError(suggest(unknown[0], list(valid), f"stage of method {self.recipe.method!r}"))
        from lmfuse.fuse.dist import process_state

        state = process_state()
        if state.is_main_process:
            check_unchanged(self.recipe)  # before the resolved recipe is rewritten to say otherwise
            # The data is read first: an unreadable corpus fails before anything is written.
            _ = self.examples if self.recipe.method == "profuser" else self.rows
            remove_orphan_temps(self.recipe.out)
            save_resolved(self.recipe)
        state.wait_for_everyone()
        if "generate" in stages:
            self.generate()  # every process takes its share of the prompts
        state.wait_for_everyone()
        if "reward" in stages and state.is_main_process:
            self.reward()
        state.wait_for_everyone()
        if "extract" in stages:
            self.extract()  # every process takes its share of the shards
        state.wait_for_everyone()
        # Alignment and fusion are cheap CPU work on finished shards: the main process does them.
        if state.is_main_process:
            if "align" in stages:
                self.align()
            if "combine" in stages:
                self.combine()
        state.wait_for_everyone()
        if "train" in stages:
            self.train()
        return self.path("train", "model")

    @staticmethod
    def _require(directory: Path, stage: str) -> None:
        if not store.stage_done(directory):
            raise InputError(f"{str(directory)!r} is not finished; run the {stage!r} stage first")


def remove_orphan_temps(out: Path) -> list[Path]:
    """Delete the temporary files of atomic writes (``.<name>.<random>.tmp``, `lmfuse.atomic`) that a killed
    run left under ``out``. A run starts here, before any process writes, so none of them is in use."""
    removed = []
    for path in out.rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

