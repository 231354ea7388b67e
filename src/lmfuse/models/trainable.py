"""The transformers side of training a target model (`lmfuse.fuse.train`): its trainable copy, its forward
pass, the learning-rate schedule, and saving the result as an HF directory. The loop itself (data order,
losses, accelerate, checkpoints) stays in ``fuse/train.py``; these are the only parts that touch the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmfuse.models.member import Member


def trainable_copy(member: Member) -> torch.nn.Module:
    """A float32 copy of ``member``'s model in training mode (the member itself is left as it was)."""
    import copy

    model = copy.deepcopy(member.model).float()
    model.train()
    return model


def causal_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` logits of a causal LM (possibly wrapped by accelerate: DDP, FSDP, ...), with gradients;
    position i predicts token i+1."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> Any:
    """transformers' linear warm-up then cosine decay to 0 over ``total_steps`` (a ``LambdaLR``)."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def save_hf_dir(model: Any, tokenizer: Any, out_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
    """Weights (safetensors) and tokenizer as one HF directory that `lmfuse.models.load` reads back;
    ``state_dict``: the weights gathered from every process when the model is sharded (FSDP, ZeRO)."""
    model.save_pretrained(out_dir, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)
