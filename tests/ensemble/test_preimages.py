"""Projection of a member's rows into the seed's vocabulary (`lmfuse.ensemble.preimages`)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmfuse.alignment import build_vocab_map, project_logprobs
from lmfuse.ensemble.fusion import fill_holes
from lmfuse.ensemble.preimages import Preimages

WIDTH = 448  # the toy members' logits width (400 tokens padded to a multiple of 64)


def rows(n: int, seed: int, peaky: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, WIDTH, generator=g) * peaky, -1)


@pytest.mark.parametrize(("src", "tgt"), [("bytebpe", "sentencepiece"), ("sentencepiece", "bytebpe")])
def test_preimages_project_is_project_logprobs_then_fill_holes(tables: dict[str, Any], src: str, tgt: str) -> None:
    vmap = build_vocab_map(tables[src], tables[tgt], method="prefix", src_width=WIDTH, tgt_width=WIDTH, cache=False)
    pre = Preimages.of(vmap.index, WIDTH, vmap.exact)
    x = rows(5, 9, peaky=8.0)
    full = project_logprobs(x, vmap)
    assert torch.allclose(pre.project(x, fill=False), full, atol=1e-6)  # -inf where nothing maps, on both
    assert torch.equal(torch.isinf(pre.project(x, fill=False)), torch.isinf(full))
    assert torch.allclose(pre.project(x, fill=True), fill_holes(full), atol=1e-6)
    assert bool(torch.isfinite(pre.project(x, fill=True)).all())
