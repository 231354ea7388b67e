"""The FuseLLM train loop with two modes (ProFuser's paired rows): exact resume, weights, skipped modes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lmfuse.fuse.schedule import ScheduleConfig, mode_weights
from lmfuse.fuse.train import FusedRow, load_fused, train
from lmfuse.models.load import load_member


def _pairs(prepared) -> list[tuple[FusedRow, FusedRow]]:  # type: ignore[no-untyped-def]
    rows = load_fused(prepared.out / "combine")
    # Inference-mode stand-in: the same rows with a context and the first half of the response only.
    ctx = np.asarray(rows[0].ids[:3])
    infer = [FusedRow(r.ids[: len(r.ids) // 2 + 1], r.topk_ids[: len(r.ids) // 2 + 1],
                      r.topk_logp[: len(r.ids) // 2 + 1], ctx) for r in rows]
    return list(zip(infer, rows, strict=True))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_member(path).model.state_dict()


def test_two_mode_training_resumes_exactly(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = prepared.members["bytebpe"]
    cfg = replace(prepared.recipe.train, max_steps=3, save_every=1)
    weights = mode_weights(ScheduleConfig("two-stage", switch=0.4))
    kw = {"modes": ("infer", "train"), "weights": weights, "progress": False}
    straight = train(target, _pairs(prepared), tmp_path / "a", cfg, **kw)  # type: ignore[arg-type]

    def crash(step: int, logs: dict[str, float]) -> None:
        if step == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(target, _pairs(prepared), tmp_path / "b", cfg, on_step=crash, **kw)  # type: ignore[arg-type]
    resumed = train(target, _pairs(prepared), tmp_path / "b", cfg, **kw)  # type: ignore[arg-type]
    a, b = _state(straight), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "a/train_log.jsonl").read_text().splitlines()]
    assert [(r["w_infer"], r["w_train"]) for r in log] == [(1.0, 0.0), (1.0, 0.0), (0.1, 1.0)]
    # The step's loss is the weighted sum of the two modes' losses, each lambda * CLM + (1 - lambda) * fusion.
    lam = cfg.lm_weight
    for r in log:
        per_mode = {m: lam * r[f"{m}_clm"] + (1 - lam) * r[f"{m}_fusion"] for m in ("infer", "train")}
        assert r["loss"] == pytest.approx(r["w_infer"] * per_mode["infer"] + r["w_train"] * per_mode["train"],
                                          rel=1e-5)


def test_a_mode_of_weight_zero_does_not_touch_the_model(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = prepared.members["bytebpe"]
    cfg = replace(prepared.recipe.train, max_steps=2)
    only_train = mode_weights(ScheduleConfig("train-only"))
    pairs = _pairs(prepared)
    garbage = [(FusedRow(np.array([5, 6, 7]), np.full((3, 1), 9), np.zeros((3, 1), np.float32)), t) for _, t in pairs]
    kw = {"modes": ("infer", "train"), "weights": only_train, "progress": False}
    a = _state(train(target, pairs, tmp_path / "a", cfg, **kw))  # type: ignore[arg-type]
    b = _state(train(target, garbage, tmp_path / "b", cfg, **kw))  # type: ignore[arg-type]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... and the training mode alone is the FuseLLM loop on the same rows.
    c = _state(train(target, prepared.out / "combine", tmp_path / "c", cfg, progress=False))
    assert all(torch.equal(a[k], c[k]) for k in a)
