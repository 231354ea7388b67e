"""One process of lmfuse's training stage under accelerate's FSDP or DeepSpeed on CPU (gloo); the
launcher is ``accelerate launch`` with a shipped config, started by test_scale_out.py:

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \
        tests/fuse/scale_out_worker.py TOY_TARGET FUSED_DIR OUT_DIR TRAIN_JSON [STOP_AFTER_STEP]

accelerate sets up FSDP and DeepSpeed only on accelerators. This script creates the gloo process group
first (accelerate's CPU path) and then passes accelerate's one device check for the back end the
launcher's environment asks for: FSDP is only selected for a MULTI_GPU-like group, so the group is named
MULTI_GPU; DeepSpeed only when the Accelerator is not told to use the CPU, so lmfuse does not tell it.
From there on everything is accelerate's and DeepSpeed's own code, driven by the shipped config:
``fully_shard`` / ``deepspeed.initialize``, their no-sync and accumulation-boundary paths, gradient
clipping, checkpoints and the gathered final state dict. Dropout is switched off so that the run can be
compared number for number with a plain one-process run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType

import lmfuse.fuse.dist
from lmfuse.fuse.recipe import TrainConfig
from lmfuse.fuse.train import train
from lmfuse.models.member import Member
from lmfuse.models.toy import toy_member


def enter_backend() -> None:
    state = PartialState(cpu=True)  # the gloo group the launcher's torchrun set up
    assert state.distributed_type == DistributedType.MULTI_CPU and state.num_processes > 1, state
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true":
        lmfuse.fuse.dist.use_cpu = lambda: False  # type: ignore[assignment]
    else:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def toy_without_dropout(spec: str) -> Member:
    _, family, arch, seed = spec.split(":")  # toy:<family>:<arch>:<seed>, built as the recipes build it
    member = toy_member(family, arch=arch, seed=int(seed), pad_to=64)
    for module in member.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return member


class Stop(Exception):
    """Ends the run after a step's checkpoint, as a killed job would (the next launch resumes)."""


def main(target_spec: str, fused_dir: str, out_dir: str, train_json: str, stop_after: str = "0") -> None:
    enter_backend()
    target = toy_without_dropout(target_spec)

    def stop(step: int, logs: dict[str, float]) -> None:
        if step == int(stop_after):
            raise Stop

    with contextlib.suppress(Stop):
        train(target, Path(fused_dir), Path(out_dir), TrainConfig(**json.loads(train_json)), progress=False, on_step=stop)


if __name__ == "__main__":
    main(*sys.argv[1:])
