"""Fusion recipes (FuseLLM, ProFuser): typed sections read once from YAML (``lmfuse/config.py``).

A recipe is a ``FuseLLMRecipe`` (``method: fusellm``, the default) or a ``ProFuserRecipe``
(``method: profuser``, which adds ``generate``, ``rewards``, ``vote`` and ``schedule``). The sections a
strategy registry configures live beside their registry: ``AlignConfig`` (``fuse/transfer.py``),
``CombineConfig`` (``fuse/combine.py``), ``RewardSpec`` (``fuse/rewards.py``), ``ScheduleConfig``
(``fuse/schedule.py``).

Precedence: defaults < YAML < ``key.sub=value`` overrides (``train.lr=2e-5``, ``sources.0.model=...``).
Relative paths are relative to the current directory. A member is given as a dict (``{model: ..., name:
..., dtype: ...}``) or a plain string (the ``model``); ``model`` is anything
``lmfuse.models.load.load_member`` accepts, or ``toy:<family>[:<arch>[:<seed>]]`` for the tiny in-process
models of ``lmfuse.models.toy`` (families bytebpe, sentencepiece, wordpiece). ``lmfuse fuse schema``
prints the JSON schema of a recipe, for editors.
"""

from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from lmfuse.config import OneOf, Shorthand, UnknownChoiceError, config_error
from lmfuse.errors import InputError, one_line
from lmfuse.fuse.combine import CombineConfig
from lmfuse.fuse.config import section
from lmfuse.fuse.losses import FUSION_LOSSES
from lmfuse.fuse.members import TOY_PREFIX, parse_toy
from lmfuse.fuse.rewards import VOTES, RewardSpec
from lmfuse.fuse.schedule import ScheduleConfig
from lmfuse.fuse.transfer import AlignConfig
from lmfuse.models.dtypes import DTYPES as LOADABLE_DTYPES
from lmfuse.registry import suggest

MAX_EPOCHS = 1000  # passes over the corpus; more is a typo, not a plan (and runs for days before failing)
MAX_STEPS = 10_000_000
DATA_FORMATS = ("text", "instruct")
DTYPES = tuple(LOADABLE_DTYPES)  # the names the model loader accepts
SAFE_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@section
class MemberSpec:
    model: str
    """zoo name, HF model directory, .gguf file, hub id, or ``toy:<family>[:<arch>[:<seed>]]``."""
    name: str = ""
    """Short name used for output directories (defaults to a slug of ``model``)."""
    dtype: Annotated[str, OneOf(DTYPES, "dtype")] = "float32"
    """Weights dtype for extraction (float32, bfloat16, float16); training uses float32."""
    chat_template: str = "auto"
    """Instruction data only: ``auto`` (the tokenizer's own chat template, else the plain format of
    ``fuse/instruct.py``), ``plain``, or the path of a Jinja template file."""

    @property
    def slug(self) -> str:
        return self.name or re.sub(r"[^A-Za-z0-9._-]+", "-", self.model.rstrip("/").split("/")[-1]).strip("-")

    @model_validator(mode="after")
    def _check(self) -> MemberSpec:
        # A member's name becomes a directory under output_dir: one safe path component (letters, digits,
        # '.', '_', '-'; not starting with a dot), so no name can point outside it.
        if not SAFE_SLUG.match(self.slug):
            origin = f"name {self.name!r}" if self.name else f"the name derived from model {self.model!r} ({self.slug!r})"
            raise ValueError(f"member {origin} is not a safe directory name: use 1-64 letters, digits, '.', '_' "
                             "or '-', starting with a letter or digit (set `name:` on the member)")
        if self.model.startswith(TOY_PREFIX):  # a bad toy spec fails here, not minutes into a run
            try:
                parse_toy(self.model)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return self


Member = Annotated[MemberSpec, Shorthand("model")]


@section
class DataConfig:
    path: str
    """Corpus: a .txt/.jsonl/.json/.parquet/.csv file or a directory of them."""
    text_field: str = "text"
    split: str = "train"
    max_chars: int = Field(default=2000, ge=1)
    """Rows are chunks of at most this many characters (cut at line ends), so every row fits every context."""
    limit: int | None = None
    """Use only the first ``limit`` rows (after ``offset``)."""
    format: Annotated[str, OneOf(DATA_FORMATS, "data format")] = "text"
    """``text`` (a corpus cut into rows; FuseLLM) or ``instruct`` (prompt + reference response; ProFuser)."""
    prompt_field: str = "prompt"
    """``instruct``: the prompt column (GSM8K: ``question``)."""
    response_field: str = "response"
    """``instruct``: the reference-response column (GSM8K: ``answer``)."""
    system: str = ""
    """``instruct``: a system message put before every prompt (empty: none)."""
    offset: int = Field(default=0, ge=0)
    """Skip the first ``offset`` rows / examples (e.g. a held-out split kept for evaluation)."""


@section
class ExtractConfig:
    top_k: int = Field(default=10, ge=1)
    batch_size: int = Field(default=8, ge=1)
    rows_per_shard: int = Field(default=256, ge=1)


@section
class TrainConfig:
    lm_weight: float = Field(default=0.9, ge=0.0, le=1.0)
    """lambda in ``lambda * CLM + (1 - lambda) * fusion``."""
    loss: Annotated[str, OneOf(FUSION_LOSSES)] = "ce"
    """Fusion loss: ``ce`` (soft-label cross-entropy, the paper) or ``kl``."""
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_ratio: float = Field(default=0.008, ge=0.0, lt=1.0)
    max_grad_norm: float = 1.0
    micro_batch_size: int = Field(default=1, ge=1)
    """Rows per process per forward pass."""
    grad_accum: int = Field(default=16, ge=1)
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = None
    """Stop after this many optimizer steps (default: ``epochs`` full passes)."""
    save_every: int = Field(default=500, ge=1)
    """Checkpoint every N optimizer steps (and at the end)."""
    log_every: int = Field(default=10, ge=1)
    seed: int = 42
    """The RNG seed (row order, dropout, initial random states)."""

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: int) -> int:
        if value > MAX_EPOCHS:
            raise ValueError(f"must be at most {MAX_EPOCHS}, got {value}; use train.max_steps for a fixed number "
                             "of optimizer steps")
        return value

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_STEPS:
            raise ValueError(f"must be in [1, {MAX_STEPS:,}], got {value}")
        return value


@section
class GenerateConfig:
    """ProFuser's inference mode: how every candidate answers each prompt (recorded in the stage's metadata)."""

    max_new_tokens: int = Field(default=256, ge=1)
    do_sample: bool = False
    """``false``: greedy decoding; ``true``: sampling with ``temperature`` / ``top_p`` and ``seed``."""
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0
    """Sampling seed; shard s samples under ``seed + s`` so a resumed run draws the same responses."""
    batch_size: int = Field(default=8, ge=1)
    rows_per_shard: int = Field(default=64, ge=1)


class RecipeParts:
    """What both kinds of recipe derive from their fields (declared by each recipe type)."""

    output_dir: str
    target: MemberSpec
    sources: tuple[MemberSpec, ...]
    combine: CombineConfig

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def members(self) -> list[MemberSpec]:
        """Target first, then the sources."""
        return [self.target, *self.sources]

    @property
    def candidates(self) -> list[MemberSpec]:
        """The members fused into the teacher, in MinCE's tie-break order (the target first, when included)."""
        return self.members if self.combine.include_target else list(self.sources)


def _default_rewards() -> tuple[RewardSpec, ...]:
    return (RewardSpec("exact-match"), RewardSpec("chrf"))


@section
class FuseLLMRecipe(RecipeParts):
    """FuseLLM: extract -> align -> combine -> train on a text corpus (``fuse/fusellm.py``)."""

    name: str
    output_dir: str
    target: Member
    data: DataConfig
    method: Literal["fusellm"] = "fusellm"
    sources: tuple[Member, ...] = ()
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    FOREIGN_KEYS: ClassVar[dict[str, str]] = {
        key: "a setting of method 'profuser'; this recipe's method is 'fusellm' (remove it, or set method: profuser)"
        for key in ("generate", "rewards", "vote", "schedule")}
    """Keys that only a ProFuser recipe has: a FuseLLM recipe names the method they belong to."""

    @model_validator(mode="after")
    def _check(self) -> FuseLLMRecipe:
        check_members(self)
        if self.data.format != "text":
            raise ValueError("method 'fusellm' reads a text corpus (data.format: text); for instruction data use "
                             "method: profuser with schedule: {name: train-only} (FuseLLM's training mode)")
        return self


@section
class ProFuserRecipe(RecipeParts):
    """ProFuser: generate -> reward -> the FuseLLM stages on two views -> train with a progressive schedule
    (``fuse/profuser.py``)."""

    name: str
    output_dir: str
    target: Member
    data: DataConfig
    method: Literal["profuser"] = "profuser"
    sources: tuple[Member, ...] = ()
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    rewards: tuple[Annotated[RewardSpec, Shorthand("name")], ...] = field(default_factory=_default_rewards)
    """The voters (each votes for its best response; majority wins)."""
    vote: Annotated[str, OneOf(VOTES)] = "majority"
    """How the rewards pick a reply: ``majority`` (default), ``borda`` or ``mean-z``."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    @model_validator(mode="after")
    def _check(self) -> ProFuserRecipe:
        check_members(self)
        if self.data.format != "instruct":
            raise ValueError("method 'profuser' needs instruction data: set data.format: instruct")
        if not self.rewards:
            raise ValueError("method 'profuser' needs at least one entry under rewards")
        return self


FuseRecipe = FuseLLMRecipe | ProFuserRecipe
RECIPE_TYPES: dict[str, type[FuseLLMRecipe] | type[ProFuserRecipe]] = {
    "fusellm": FuseLLMRecipe, "profuser": ProFuserRecipe}
"""``method:`` -> its recipe type (the method's pipeline: ``fuse/pipeline.py``'s ``TRAINING_METHODS``)."""


def check_members(recipe: FuseRecipe) -> None:
    slugs = [spec.slug for spec in recipe.members]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"member names must be unique, got {slugs}; set `name:` on the duplicates")
    if not recipe.candidates:
        raise ValueError("a recipe needs at least one candidate: add sources or set combine.include_target")


def recipe_from_dict(data: dict[str, Any]) -> FuseRecipe:
    """Build the recipe of ``data['method']`` (default ``fusellm``); every problem is one lmfuse error."""
    method = data.get("method", "fusellm")
    kind = RECIPE_TYPES.get(method) if isinstance(method, str) else None
    if kind is None:
        raise UnknownChoiceError(suggest(str(method), list(RECIPE_TYPES), "method"))
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        raise config_error(exc, kind, "recipe") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FuseRecipe:
    """Read a YAML recipe, apply ``key.sub=value`` overrides, build and validate it."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read recipe {str(path)!r}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise InputError(f"recipe {str(path)!r} must be a mapping at the top level")
    for item in overrides:
        apply_override(data, item)
    return recipe_from_dict(data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.0.c=value`` (value parsed as YAML) inside nested dicts/lists."""
    if "=" not in item:
        raise InputError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw)
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(f"override {item!r}: {part!r} is not an index of a list of {len(node)}")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                if isinstance(node[idx], str):  # a shorthand entry: expand it to set one of its keys
                    node[idx] = {"name" if parts[i - 1] == "rewards" else "model": node[idx]}
                node = node[idx]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})


def to_dict(recipe: FuseRecipe) -> dict[str, Any]:
    """A recipe as plain YAML-able data (the resolved config saved next to the outputs)."""
    data: dict[str, Any] = TypeAdapter(type(recipe)).dump_python(recipe, mode="json")
    return data


def recipe_schema() -> dict[str, Any]:
    """The JSON schema of a recipe (either method), for editors (``lmfuse fuse schema``)."""
    schema: dict[str, Any] = TypeAdapter(FuseRecipe).json_schema()
    schema["title"] = "lmfuse fuse recipe"
    # Without `method` a recipe is FuseLLM's (recipe_from_dict): only a FuseLLM recipe may leave it out.
    schema["$defs"]["ProFuserRecipe"]["required"].append("method")
    return schema
