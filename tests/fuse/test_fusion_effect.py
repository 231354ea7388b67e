"""The hand-made case behind the FuseLLM code experiment: the fusion term, trained through `train`, moves
the target toward the teacher's distribution, and plain continued training (lambda 1) does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lmfuse.fuse.recipe import TrainConfig
from lmfuse.fuse.train import FusedRow, train
from lmfuse.models.member import Member

FAVOURED = 7  # the teacher's token: never a label of the rows below


def teacher_mass(model: torch.nn.Module, rows: list[FusedRow], prefix: int) -> float:
    """Mean probability the model gives ``FAVOURED`` at the rows' labelled positions."""
    probs = []
    with torch.inference_mode():
        for r in rows:
            ids = torch.as_tensor([[prefix, *r.ids[:-1].tolist()]])
            probs.append(model(input_ids=ids).logits[0].float().softmax(-1)[:, FAVOURED])
    return float(torch.cat(probs).mean())


@pytest.mark.slow  # ~20 s: three short trainings of a toy target
def test_the_fusion_term_pulls_the_target_toward_the_teacher(toy_members: dict[str, Member], tmp_path: Path) -> None:
    target = toy_members["bytebpe"]
    rng = np.random.default_rng(0)
    # The teacher puts 0.9 on FAVOURED and 0.1 on the label at every position (top-2, log-probs).
    rows = []
    for _ in range(8):
        ids = rng.integers(20, 200, size=24)
        topk = np.stack([np.full(24, FAVOURED), ids], axis=1)
        rows.append(FusedRow(ids, topk, np.log(np.tile([0.9, 0.1], (24, 1))).astype(np.float32)))
    before = teacher_mass(target.model, rows, target.prefix_token_id)
    after = {}
    for lm_weight in (0.0, 0.5, 1.0):
        cfg = TrainConfig(lm_weight=lm_weight, lr=3e-2, warmup_ratio=0.0, grad_accum=2, epochs=4, save_every=100,
                          log_every=1, seed=0)
        model_dir = train(target, [(r,) for r in rows], tmp_path / f"lambda-{lm_weight}", cfg, progress=False)
        after[lm_weight] = teacher_mass(AutoModelForCausalLM.from_pretrained(model_dir), rows, target.prefix_token_id)
    # Fusion alone: the teacher's token gains most of the mass; plain training on the labels lowers it.
    assert after[0.0] > 0.5 > 10 * before
    assert after[1.0] < before
    # lambda weighs the two: halfway lands between them.
    assert after[1.0] < after[0.5] < after[0.0]
