"""`PackConfig`: how a pack is built and fused, typed and validated once. `Pack`, the CLI (``--model``,
``--weighting``, ...), the server and the lm-eval adapter all build one.

A member is a `MemberSpec`: a model spec as `lmfuse.models.load.locate` resolves it, the device its forward
passes run on and its dtype. On the command line: ``SPEC[,device=DEVICE][,dtype=DTYPE][,name=NAME]``, e.g.
``--model qwen-coder,device=cuda:1,dtype=bfloat16``.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmfuse.config import OneOf, config_error
from lmfuse.ensemble.fusion import FUSIONS
from lmfuse.ensemble.weighting import DEFAULT_ONLINE_RATE, WEIGHTINGS, WeightOptions
from lmfuse.errors import InputError
from lmfuse.models.dtypes import DTYPES as LOADABLE_DTYPES
from lmfuse.registry import suggest

NLL_NORMS = ("token", "byte")
NllNorm = Literal["token", "byte"]
# Per byte, not the paper's per token: on the default pack packllm-opt was better with it on 4 of 6 text
# chunks (equal on 2) and on the 8-task development suite (acc_norm +0.015 [+0.006, +0.025], paired over
# 679 examples); docs/results/pack/README.md, "NLL per token or per byte".
DEFAULT_NLL_NORM: NllNorm = "byte"
DEFAULT_WEIGHTING = "packllm-opt"
# The weight fit reads the last 1,024 bytes of the prompt (~256 tokens, the span PackLLM's fit covered).
DEFAULT_FIT_BYTES = 1024
# How members with different tokenizers meet: "exact" (lmfuse's default: every member read as the byte-level
# model its own tokens define) or "mined" (the PackLLM paper's code: a seed vocabulary per example and static
# MinED maps onto it; `lmfuse.ensemble.mined`).
ALIGNMENTS = ("exact", "mined")
# The weightings the paper-faithful token-level path fits: those of the paper's code (the others are lmfuse's
# and use the byte-level machinery: per-byte following, demonstrations' answer bytes, or autograd over
# [K, T, S], which a 262k seed vocabulary makes costly).
MINED_WEIGHTINGS = ("uniform", "fixed", "top1", "packllm-sim", "packllm-opt")
DTYPES = tuple(LOADABLE_DTYPES)  # the names the model loader accepts
SPEC_KEYS = ("device", "dtype", "name")
M = TypeVar("M", bound=BaseModel)


def check_device(device: str) -> str:
    """A torch device string this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a device; valid: cpu, cuda, cuda:N, mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this machine has no CUDA GPU (torch {torch.__version__}); use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: lmfuse runs members on cpu, cuda or mps")
    return device


class MemberSpec(BaseModel):
    """One member: where its model is, the device its forward passes run on, its dtype and its name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: Annotated[str, Field(min_length=1)]
    device: str = "cpu"
    dtype: Annotated[str, OneOf(DTYPES, "dtype")] | None = None  # None: the pack's dtype
    name: str | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @classmethod
    def parse(cls, text: str) -> MemberSpec:
        """``SPEC[,key=value...]`` with keys device, dtype and name."""
        spec, *options = text.split(",")
        fields: dict[str, str] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in SPEC_KEYS:
                raise InputError(f"member {text!r}: {option!r} is not an option; "
                                 f"write SPEC[,device=D][,dtype=T][,name=N] ({suggest(key, SPEC_KEYS, 'option')})")
            fields[key] = value
        return validated(cls, {"spec": spec, **fields}, f"member {text!r}")


class PackConfig(BaseModel):
    """How a pack weighs, fuses and decodes (``members`` empty: the default pack)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: list[MemberSpec] = []
    weighting: Annotated[str, OneOf(WEIGHTINGS)] = DEFAULT_WEIGHTING
    fusion: Annotated[str, OneOf(FUSIONS)] = "product"
    alignment: Annotated[str, OneOf(ALIGNMENTS, "alignment")] = "exact"
    seed_member: str | None = None  # the member whose tokens decoding emits (default: the largest weight)
    nll_norm: NllNorm = DEFAULT_NLL_NORM
    seed: int = 0  # the sampling seed of the first prompt (prompt i gets seed + i)
    tau: Annotated[float, Field(gt=0)] = 1.0  # packllm-sim's temperature
    online_rate: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_ONLINE_RATE  # ``online``: step size per byte
    weights: list[Annotated[float, Field(ge=0)]] | None = None  # weighting "fixed": one per member
    fit_bytes: Annotated[int, Field(ge=1)] = DEFAULT_FIT_BYTES
    dtype: Annotated[str, OneOf(DTYPES, "dtype")] = "float32"
    # One worker thread per member, so their forward passes of a step run at the same time. None: only when
    # the members are on more than one device (on one 2-core CPU, threads competing for the cores were
    # 0.85-0.86x as fast as one member after another at 8 and 16 prompts: benchmarks/pack.py, docs/batching.md).
    parallel: bool | None = None

    @model_validator(mode="after")
    def _mined_weighting(self) -> PackConfig:
        if self.alignment == "mined" and self.weighting not in MINED_WEIGHTINGS:
            raise ValueError(not_mined(self.weighting))
        return self

    @model_validator(mode="after")
    def _fixed_weights(self) -> PackConfig:
        if self.weights is not None and not sum(self.weights) > 0:
            raise ValueError(f"weights must have a positive sum; got {self.weights}")
        if self.weighting == "fixed" and self.weights is None:
            raise ValueError("weighting 'fixed' needs weights (one per member)")
        return self

    @property
    def options(self) -> WeightOptions:
        return WeightOptions(tau=self.tau, fixed=self.weights, online_rate=self.online_rate)

    @classmethod
    def of(cls, **fields: object) -> PackConfig:
        """A config from keyword fields; a bad value is an `InputError` naming it and what is valid."""
        members = fields.get("members")
        if isinstance(members, list | tuple):
            fields["members"] = [MemberSpec.parse(m) if isinstance(m, str) else m for m in members]
        return validated(cls, fields, "pack")


def not_mined(weighting: str) -> str:
    """Why ``weighting`` cannot run with ``alignment="mined"`` and what can (`MINED_WEIGHTINGS`)."""
    return (f"weighting {weighting!r} is not one of the paper's: alignment 'mined' (the paper's token-level fusion "
            f"over a seed vocabulary) fits {', '.join(MINED_WEIGHTINGS)}; the others need alignment 'exact'")


def validated(model: type[M], fields: dict[str, object], what: str) -> M:
    """``model(**fields)``; pydantic's errors are one lmfuse error (`lmfuse.config.config_error`) that starts
    with ``what`` and names each bad field, its value and what is valid."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise config_error(exc, model, what, prefix=True) from None
