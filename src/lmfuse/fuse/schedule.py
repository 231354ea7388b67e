"""ProFuser's progressive schedule: the loss weights ``(w_infer, w_train)`` as a function of the step.

``loss = w_infer * L_infer + w_train * L_train``, each ``L = lambda * CLM + (1 - lambda) * fusion`` on
its own row (the winner's generated response with the winner's distributions, or the reference
response with the MinCE candidate's). A schedule is a pure function ``(step, total_steps, cfg) ->
(w_infer, w_train)`` of the optimizer step (0-based), registered under a name:

==============  =====================================================================================
``two-stage``   the paper: ``(1, 0)`` for the first ``switch`` fraction of the steps, then
                ``(late_weight, 1)`` = ``(0.1, 1)`` — inference mode first, then training mode
``linear``      ours: ramps from ``(1, 0)`` to ``(late_weight, 1)`` linearly over training
``simul``       the paper's SimulFuse ablation: ``(1, 1)`` throughout
``reverse``     the paper's ReverseFuse ablation: ``(0, 1)`` then ``(1, late_weight)``
``train-only``  ``(0, 1)``: FuseLLM's training mode alone (the MinCE baseline on the same data)
``infer-only``  ``(1, 0)``: the inference mode alone
==============  =====================================================================================

A weight of 0 skips that mode's forward pass for the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from lmfuse.config import OneOf
from lmfuse.fuse.config import section
from lmfuse.registry import Registry

ScheduleFn = Callable[[int, int, "ScheduleConfig"], tuple[float, float]]
SCHEDULES: Registry[ScheduleFn] = Registry("schedule")


@section
class ScheduleConfig:
    """The recipe's ``schedule`` section (ProFuser): ``(w_infer, w_train)`` as a function of the step."""

    name: Annotated[str, OneOf(SCHEDULES)] = "two-stage"
    """``two-stage`` (paper), ``linear``, ``simul``, ``reverse``, ``train-only`` (FuseLLM), ``infer-only``."""
    switch: float = Field(default=0.5, ge=0.0, le=1.0)
    """Fraction of the optimizer steps spent in the first stage (``two-stage``, ``reverse``)."""
    late_weight: float = Field(default=0.1, ge=0.0)
    """Weight kept on the first stage's mode in the second stage (paper: w_infer = 0.1)."""


def progress(step: int, total_steps: int) -> float:
    """Fraction of training done before optimizer step ``step`` (0-based): ``step / total_steps``."""
    return step / max(total_steps, 1)


@SCHEDULES.register("two-stage")
def two_stage(step: int, total_steps: int, cfg: ScheduleConfig) -> tuple[float, float]:
    return (1.0, 0.0) if progress(step, total_steps) < cfg.switch else (cfg.late_weight, 1.0)


@SCHEDULES.register("linear")
def linear(step: int, total_steps: int, cfg: ScheduleConfig) -> tuple[float, float]:
    # The last step reaches (late_weight, 1), the same end point as the two stages.
    p = step / max(total_steps - 1, 1)
    return (1.0 + (cfg.late_weight - 1.0) * p, p)


@SCHEDULES.register("simul")
def simul(step: int, total_steps: int, cfg: ScheduleConfig) -> tuple[float, float]:
    return (1.0, 1.0)


@SCHEDULES.register("reverse")
def reverse(step: int, total_steps: int, cfg: ScheduleConfig) -> tuple[float, float]:
    return (0.0, 1.0) if progress(step, total_steps) < cfg.switch else (1.0, cfg.late_weight)


@SCHEDULES.register("train-only")
def train_only(step: int, total_steps: int, cfg: ScheduleConfig) -> tuple[float, float]:
    return (0.0, 1.0)


@SCHEDULES.register("infer-only")
def infer_only(step: int, total_steps: int, cfg: ScheduleConfig) -> tuple[float, float]:
    return (1.0, 0.0)


def mode_weights(cfg: ScheduleConfig) -> Callable[[int, int], tuple[float, float]]:
    """The configured schedule as ``(step, total_steps) -> (w_infer, w_train)``."""
    fn = SCHEDULES.get(cfg.name)
    return lambda step, total: fn(step, total, cfg)
