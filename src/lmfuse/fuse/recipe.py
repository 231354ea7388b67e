"""Fusion recipes (FuseLLM, ProFuser): frozen dataclasses loaded from YAML, unknown keys rejected with suggestions.

Precedence: dataclass defaults < YAML < ``key.sub=value`` overrides (``train.lr=2e-5``,
``sources.0.model=...``). Relative paths are relative to the current directory. A member is given as
a dict (``{model: ..., name: ..., dtype: ...}``) or a plain string (the ``model``); ``model`` is
anything ``lmfuse.models.load.load_member`` accepts, or ``toy:<family>[:<arch>[:<seed>]]`` for the
tiny in-process models of ``lmfuse.models.toy`` (families bytebpe, sentencepiece, wordpiece).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from lmfuse.errors import InputError, one_line
from lmfuse.registry import suggest

METHODS = ("fusellm", "profuser")
MAX_EPOCHS = 1000  # passes over the corpus; more is a typo, not a plan (and runs for days before failing)
MAX_STEPS = 10_000_000
DATA_FORMATS = ("text", "instruct")


@dataclass(frozen=True)
class MemberSpec:
    model: str
    """zoo name, HF model directory, .gguf file, hub id, or ``toy:<family>[:<arch>[:<seed>]]``."""
    name: str = ""
    """Short name used for output directories (defaults to a slug of ``model``)."""
    dtype: str = "float32"
    """Weights dtype for extraction (float32, bfloat16, float16); training uses float32."""
    chat_template: str = "auto"
    """Instruction data only: ``auto`` (the tokenizer's own chat template, else the plain format of
    ``fuse/instruct.py``), ``plain``, or the path of a Jinja template file."""

    @property
    def slug(self) -> str:
        return self.name or re.sub(r"[^A-Za-z0-9._-]+", "-", self.model.rstrip("/").split("/")[-1]).strip("-")


SAFE_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_slug(spec: MemberSpec) -> None:
    """A member's name becomes a directory under ``output_dir``: it must be one safe path component
    (letters, digits, ``.``, ``_``, ``-``; not starting with a dot), so no name can point outside it."""
    if not SAFE_SLUG.match(spec.slug):
        origin = f"name {spec.name!r}" if spec.name else f"the name derived from model {spec.model!r} ({spec.slug!r})"
        raise InputError(f"member {origin} is not a safe directory name: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (set `name:` on the member)")


@dataclass(frozen=True)
class DataConfig:
    path: str
    """Corpus: a .txt/.jsonl/.json/.parquet/.csv file or a directory of them."""
    text_field: str = "text"
    split: str = "train"
    max_chars: int = 2000
    """Rows are chunks of at most this many characters (cut at line ends), so every row fits every context."""
    limit: int | None = None
    """Use only the first ``limit`` rows (after ``offset``)."""
    format: str = "text"
    """``text`` (a corpus cut into rows; FuseLLM) or ``instruct`` (prompt + reference response; ProFuser)."""
    prompt_field: str = "prompt"
    """``instruct``: the prompt column (GSM8K: ``question``)."""
    response_field: str = "response"
    """``instruct``: the reference-response column (GSM8K: ``answer``)."""
    system: str = ""
    """``instruct``: a system message put before every prompt (empty: none)."""
    offset: int = 0
    """Skip the first ``offset`` rows / examples (e.g. a held-out split kept for evaluation)."""

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise InputError(f"data.max_chars must be positive, got {self.max_chars}")
        if self.offset < 0:
            raise InputError(f"data.offset must be >= 0, got {self.offset}")
        if self.format not in DATA_FORMATS:
            raise InputError(suggest(self.format, list(DATA_FORMATS), "data.format"))


@dataclass(frozen=True)
class ExtractConfig:
    top_k: int = 10
    batch_size: int = 8
    rows_per_shard: int = 256

    def __post_init__(self) -> None:
        for key in ("top_k", "batch_size", "rows_per_shard"):
            if getattr(self, key) < 1:
                raise InputError(f"extract.{key} must be at least 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class AlignConfig:
    vocab: str = "mined"
    """Vocabulary map: ``mined`` (exact, else minimum edit distance; the paper's MinED) or ``exact``."""
    sequence: str = "offsets"
    """Token pairing: ``offsets`` (character offsets, DTW fallback) or ``dtw`` (the reference)."""
    fallback: str = "one-hot"
    """Unaligned target positions: ``one-hot`` on the predicted token, or ``mask`` (no teacher)."""


@dataclass(frozen=True)
class CombineConfig:
    function: str = "min-ce"
    """Fusion function: ``min-ce``, ``avg-ce`` (the reference's nearly uniform weights) or ``softmax-ce``."""
    granularity: str = "sequence"
    """``sequence`` (the paper) or ``token``."""
    ce_norm: str = "byte"
    """How sequence CEs are compared: ``byte`` (nats per UTF-8 byte) or ``token`` (the reference)."""
    include_target: bool = True
    """The target is a candidate too (the paper's ref model)."""


@dataclass(frozen=True)
class TrainConfig:
    lm_weight: float = 0.9
    """lambda in ``lambda * CLM + (1 - lambda) * fusion``."""
    loss: str = "ce"
    """Fusion loss: ``ce`` (soft-label cross-entropy, the paper) or ``kl``."""
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_ratio: float = 0.008
    max_grad_norm: float = 1.0
    micro_batch_size: int = 1
    """Rows per process per forward pass."""
    grad_accum: int = 16
    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (default: ``epochs`` full passes)."""
    save_every: int = 500
    """Checkpoint every N optimizer steps (and at the end)."""
    log_every: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0.0 <= self.lm_weight <= 1.0:
            raise InputError(f"train.lm_weight must be in [0, 1], got {self.lm_weight}")
        for key in ("micro_batch_size", "grad_accum", "epochs", "save_every", "log_every"):
            if getattr(self, key) < 1:
                raise InputError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InputError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.epochs > MAX_EPOCHS:
            raise InputError(f"train.epochs must be at most {MAX_EPOCHS}, got {self.epochs}; "
                             "use train.max_steps for a fixed number of optimizer steps")
        if self.max_steps is not None and not 1 <= self.max_steps <= MAX_STEPS:
            raise InputError(f"train.max_steps must be in [1, {MAX_STEPS:,}], got {self.max_steps}")


@dataclass(frozen=True)
class GenerateConfig:
    """ProFuser's inference mode: how every candidate answers each prompt (recorded in the stage's metadata)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    """``false``: greedy decoding; ``true``: sampling with ``temperature`` / ``top_p`` and ``seed``."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    """Sampling seed; shard s samples under ``seed + s`` so a resumed run draws the same responses."""
    batch_size: int = 8
    rows_per_shard: int = 64

    def __post_init__(self) -> None:
        for key in ("max_new_tokens", "batch_size", "rows_per_shard"):
            if getattr(self, key) < 1:
                raise InputError(f"generate.{key} must be at least 1, got {getattr(self, key)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise InputError(f"generate: need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass(frozen=True)
class RewardSpec:
    """One voter of ProFuser's inference mode (registry ``lmfuse.fuse.rewards.REWARDS``)."""

    name: str
    """``exact-match`` (final answer), ``chrf`` (sacrebleu), ``reward-model`` (a sequence classifier)."""
    model: str = ""
    """``reward-model``: an HF directory holding an ``AutoModelForSequenceClassification`` and its tokenizer."""
    batch_size: int = 8
    max_length: int = 1024
    """``reward-model``: (prompt, response) pairs are truncated to this many tokens."""


@dataclass(frozen=True)
class ScheduleConfig:
    """ProFuser's progressive schedule: ``(w_infer, w_train)`` as a function of the step (``fuse/schedule.py``)."""

    name: str = "two-stage"
    """``two-stage`` (paper), ``linear``, ``simul``, ``reverse``, ``train-only`` (FuseLLM), ``infer-only``."""
    switch: float = 0.5
    """Fraction of the optimizer steps spent in the first stage (``two-stage``, ``reverse``)."""
    late_weight: float = 0.1
    """Weight kept on the first stage's mode in the second stage (paper: w_infer = 0.1)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.switch <= 1.0:
            raise InputError(f"schedule.switch must be in [0, 1], got {self.switch}")
        if self.late_weight < 0:
            raise InputError(f"schedule.late_weight must be >= 0, got {self.late_weight}")


def _default_rewards() -> tuple[RewardSpec, ...]:
    return (RewardSpec("exact-match"), RewardSpec("chrf"))


@dataclass(frozen=True)
class FuseRecipe:
    name: str
    output_dir: str
    target: MemberSpec
    data: DataConfig
    method: str = "fusellm"
    """``fusellm`` (extract -> align -> combine -> train) or ``profuser`` (generate -> reward -> the same)."""
    sources: tuple[MemberSpec, ...] = ()
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """``profuser`` only."""
    rewards: tuple[RewardSpec, ...] = field(default_factory=_default_rewards)
    """``profuser`` only: the voters (each votes for its best response; majority wins)."""
    vote: str = "majority"
    """``profuser`` only: how the rewards pick a reply: ``majority`` (default), ``borda`` or ``mean-z``."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """``profuser`` only."""

    def __post_init__(self) -> None:
        slugs = [self.target.slug, *(s.slug for s in self.sources)]
        for spec in (self.target, *self.sources):
            check_slug(spec)
        if len(set(slugs)) != len(slugs):
            raise InputError(f"member names must be unique, got {slugs}; set `name:` on the duplicates")
        if not self.sources and not self.combine.include_target:
            raise InputError("a recipe needs at least one candidate: add sources or set combine.include_target")
        if self.method not in METHODS:
            raise InputError(suggest(self.method, list(METHODS), "method"))
        if self.method == "profuser" and self.data.format != "instruct":
            raise InputError("method 'profuser' needs instruction data: set data.format: instruct")
        if self.method == "fusellm" and self.data.format != "text":
            raise InputError("method 'fusellm' reads a text corpus (data.format: text); for instruction data use "
                             "method: profuser with schedule: {name: train-only} (FuseLLM's training mode)")
        if self.method == "profuser" and not self.rewards:
            raise InputError("method 'profuser' needs at least one entry under rewards")

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def validate(recipe: FuseRecipe) -> None:
    """Check every registry name of a recipe (fails with suggestions); loads no weights."""
    from lmfuse.fuse.align import FALLBACKS
    from lmfuse.fuse.combine import CE_NORMS, FUSIONS, GRANULARITIES
    from lmfuse.fuse.losses import FUSION_LOSSES
    from lmfuse.fuse.members import TOY_PREFIX, parse_toy

    for member in (recipe.target, *recipe.sources):  # a bad toy spec fails here, not minutes into a run
        if member.model.startswith(TOY_PREFIX):
            parse_toy(member.model)
    FUSIONS.get(recipe.combine.function)
    FUSION_LOSSES.get(recipe.train.loss)
    if recipe.method == "profuser":
        from lmfuse.fuse.rewards import VOTES, check_reward
        from lmfuse.fuse.schedule import SCHEDULES

        SCHEDULES.get(recipe.schedule.name)
        VOTES.get(recipe.vote)
        for spec in recipe.rewards:
            check_reward(spec)
    checks = [("align.vocab", recipe.align.vocab, ("mined", "exact")),
              ("align.sequence", recipe.align.sequence, ("offsets", "dtw")),
              ("align.fallback", recipe.align.fallback, FALLBACKS),
              ("combine.granularity", recipe.combine.granularity, GRANULARITIES),
              ("combine.ce_norm", recipe.combine.ce_norm, CE_NORMS)]
    for key, value, valid in checks:
        if value not in valid:
            raise InputError(suggest(value, list(valid), key))


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FuseRecipe:
    """Read a YAML recipe, apply ``key.sub=value`` overrides, build and validate the dataclasses."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read recipe {str(path)!r}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise InputError(f"recipe {str(path)!r} must be a mapping at the top level")
    for item in overrides:
        apply_override(data, item)
    recipe = from_dict(FuseRecipe, data, "")
    validate(recipe)
    return recipe


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
                if isinstance(node[idx], str):
                    node[idx] = {"model": node[idx]}
                node = node[idx]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})


def to_dict(obj: Any) -> Any:
    """A recipe as plain YAML-able data (the resolved config saved next to the outputs)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(x) for x in obj]
    return obj


def from_dict(cls: Any, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors naming the key."""
    if cls is MemberSpec and isinstance(data, str):
        data = {"model": data}
    if cls is RewardSpec and isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise InputError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise InputError(suggest(str(key), names, f"key in {where or 'recipe'}"))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}".lstrip("."))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(f"{where or 'recipe'}: missing required key {f.name!r}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise InputError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}.{i}") for i, v in enumerate(value))
        if len(args) != len(value):
            raise InputError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}.{i}") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-5 as a string
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise InputError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
