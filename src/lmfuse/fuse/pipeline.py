"""Run a recipe: its training method's stages, each resumable, gated per process (``Run.stage``).

A training method is one function that reads top to bottom (``TRAINING_METHODS``): ``fusellm``
(``fuse/fusellm.py``: extract -> align -> combine -> train) and ``profuser`` (``fuse/profuser.py``:
generate -> reward -> the same stages on two kinds of view -> train with a progressive schedule). They
share the stage functions of ``fuse/stages.py`` and the sharded stage loop of ``fuse/sharded.py``.

Every run, whole or one stage (``lmfuse fuse extract ...``), starts the same way on the main process
(refuse changed settings, read the data, remove orphan temporaries, save ``recipe.resolved.yaml``); each
stage then runs on every process (generate, extract, train: the work is split by shards) or on the main
process alone (reward, align, combine), with a barrier before each stage and at the end. A stage whose
manifest says ``complete`` is skipped; an unfinished one resumes at its first missing shard (train: at
its latest checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from lmfuse import atomic
from lmfuse.errors import InputError
from lmfuse.fuse.corpus import corpus_rows
from lmfuse.fuse.instruct import Example
from lmfuse.fuse.recipe import FuseRecipe, MemberSpec, to_dict
from lmfuse.models.member import Member
from lmfuse.registry import Registry, suggest

R = TypeVar("R", bound=FuseRecipe)


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
    # A setting the recipe's type does not have (another method's, or one a former version wrote) shapes none
    # of its outputs; a change of method is a change of `method` itself.
    old = {key: value for key, value in old.items() if key in new}
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


class Run(Generic[R]):
    """One run of a recipe: its data and members (loaded lazily; ``members`` may pre-supply loaded ones by
    slug), and which stages this process runs."""

    def __init__(self, recipe: R, members: dict[str, Member] | None = None, progress: bool = True,
                 num_shards: int | None = None, shard_index: int | None = None) -> None:
        self.recipe = recipe
        self._members = dict(members or {})
        self.progress = progress
        self._rows: list[str] | None = None
        self._examples: list[Example] | None = None
        self._prompts: dict[str, list[str]] = {}
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.selected: tuple[str, ...] = ()

    def run(self, stages: Sequence[str] | None = None) -> Path:
        """Run ``stages`` (default: all of the method's, in its order; finished ones are skipped) on every
        process of a launch. Returns the trained model's path (there once the train stage has run)."""
        from lmfuse.fuse.dist import process_state

        method = TRAINING_METHODS.get(self.recipe.method)
        self.selected = method.stages if stages is None else tuple(stages)
        unknown = [s for s in self.selected if s not in method.stages]
        if unknown:
            raise InputError(suggest(unknown[0], list(method.stages), f"stage of method {self.recipe.method!r}"))
        state = process_state()
        if state.is_main_process:
            check_unchanged(self.recipe)  # before the resolved recipe is rewritten to say otherwise
            self.read_data()  # an unreadable corpus fails before anything is written
            if (self.num_shards or 1) == 1:  # with --num-shards N > 1, other invocations may be writing now
                remove_orphan_temps(self.recipe.out)
            save_resolved(self.recipe)
        result = method.run(self)
        state.wait_for_everyone()
        return result

    def stage(self, name: str, every_process: bool = False) -> bool:
        """Whether this process runs stage ``name`` now: a selected stage runs on every process (each takes
        its share of the shards) or on the main process alone. Every process waits here for the others
        first, so a stage starts once the one before has finished everywhere."""
        from lmfuse.fuse.dist import process_state

        state = process_state()
        state.wait_for_everyone()
        return name in self.selected and (every_process or state.is_main_process)

    @property
    def split(self) -> tuple[int, int]:
        """(processes, this one's index) for sharded stages: ``--num-shards/--shard-index``, else the launch's."""
        if self.num_shards is not None and self.shard_index is not None:
            return self.num_shards, self.shard_index
        from lmfuse.fuse.dist import process_state

        state = process_state()
        return state.num_processes, state.process_index

    def read_data(self) -> None:
        _ = self.examples if self.recipe.data.format == "instruct" else self.rows

    @property
    def rows(self) -> list[str]:
        """The corpus rows (``data.format: text``)."""
        if self._rows is None:
            self._rows = rows_of(self.recipe)
        return self._rows

    @property
    def examples(self) -> list[Example]:
        """The prompt + reference examples (``data.format: instruct``)."""
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

    def target_only(self) -> Member:
        """The target, with every other member let go: their memory is free before its copy is trained."""
        target = self.recipe.target
        self._members = {k: v for k, v in self._members.items() if k == target.slug}
        return self.member(target)

    def path(self, *parts: str) -> Path:
        return self.recipe.out.joinpath(*parts)

    def trained(self) -> bool:
        return (self.path("train", "model") / "config.json").is_file()


@dataclass(frozen=True)
class TrainingMethod:
    """A training method: its stages in order, and the function that runs them (``Run.stage`` gates each)."""

    stages: tuple[str, ...]
    run: Callable[[Run[Any]], Path]


# Each method registers itself where it is written (fuse/fusellm.py, fuse/profuser.py), so this module
# imports none of them; importing `lmfuse.fuse` imports both.
TRAINING_METHODS: Registry[TrainingMethod] = Registry("training method")


def remove_orphan_temps(out: Path) -> list[Path]:
    """Delete the temporary files of atomic writes (``.<name>.<random>.tmp``, `lmfuse.atomic`) that a killed
    run left under ``out``. A run starts here, before any process writes, so none of them is in use."""
    removed = []
    for path in out.rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

