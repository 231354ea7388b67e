"""What the training stage needs from accelerate's FSDP and DeepSpeed back ends (configs/accelerate/*.yaml).

The recipe owns the optimisation: ``train.grad_accum``, ``train.micro_batch_size`` and
``train.max_grad_norm``. An accelerate config that sets them differently would make accelerate (or
DeepSpeed, which steps the optimizer inside ``backward``) accumulate or clip differently from the loop, so
a conflicting value is refused, and DeepSpeed's ``auto`` values are filled from the recipe.

accelerate selects FSDP and DeepSpeed only on accelerators (GPUs, ...); on a CPU-only machine it would run
a launcher config that asks for them as plain DDP without a word. That is refused too.
"""

from __future__ import annotations

import os
from typing import Any

from lmfuse.errors import InputError
from lmfuse.fuse.recipe import TrainConfig

# launcher flag (set by `accelerate launch --config_file ...`) -> accelerate's DistributedType name
REQUESTED = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED"}


def check_backend(accelerator: Any, cfg: TrainConfig) -> None:
    """Refuse a back end the launcher asked for but accelerate did not set up, and a conflicting
    ``gradient_accumulation_steps`` (``Accelerator`` reads it from the launcher's environment)."""
    running = accelerator.distributed_type.name
    for flag, wanted in REQUESTED.items():
        if os.environ.get(flag, "false").lower() == "true" and running != wanted:
            raise InputError(
                f"the accelerate config asks for {wanted}, but accelerate runs {running}: it selects FSDP and "
                "DeepSpeed only on GPUs (or other accelerators). On CPUs use torchrun or accelerate's default "
                "config (DDP over gloo); see docs/fuse.md, 'Scaling out'"
            )
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise InputError(
            f"the accelerate config sets gradient_accumulation_steps={accelerator.gradient_accumulation_steps}, but "
            f"the recipe's train.grad_accum is {cfg.grad_accum}; lmfuse takes it from the recipe: remove it from "
            "the accelerate config (or set train.grad_accum)"
        )


def fit_deepspeed(accelerator: Any, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed config's batch, accumulation and clipping values from the recipe (before ``prepare``).

    No dataloader is prepared, so accelerate cannot infer the micro-batch size; DeepSpeed clips inside its
    own step, so ``train.max_grad_norm`` must reach it. A value the config states differently is refused.
    """
    if accelerator.distributed_type.name != "DEEPSPEED":
        return
    plugin = accelerator.state.deepspeed_plugin
    ours = {"train_micro_batch_size_per_gpu": cfg.micro_batch_size, "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.max_grad_norm}
    recipe_key = {"train_micro_batch_size_per_gpu": "micro_batch_size", "gradient_accumulation_steps": "grad_accum",
                  "gradient_clipping": "max_grad_norm"}
    for key, value in ours.items():
        stated = plugin.deepspeed_config.get(key, "auto")
        if stated != "auto" and stated != value:
            raise InputError(
                f"the DeepSpeed config sets {key}={stated}, but the recipe's train.{recipe_key[key]} is {value}; "
                f"lmfuse takes it from the recipe: set it to \"auto\" or remove it from the DeepSpeed config"
            )
        plugin.deepspeed_config[key] = value
