"""The weight fit's support (`lmfuse.ensemble.support`): exact projected values without full-width projection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lmfuse.alignment import VocabMap, build_vocab_map, project_logprobs
from lmfuse.ensemble.fusion import fill_holes
from lmfuse.ensemble.support import Preimages, block_topk, floor_logprob, restricted_problem, span
from lmfuse.ensemble.weighting import WeightProblem

WIDTH = 448  # the toy members' logits width (400 tokens padded to a multiple of 64)


def rows(n: int, seed: int, peaky: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, WIDTH, generator=g) * peaky, -1)


@pytest.mark.parametrize(("src", "tgt"), [("bytebpe", "sentencepiece"), ("sentencepiece", "bytebpe")])
def test_preimages_logprob_equals_the_full_projection(tables: dict[str, Any], src: str, tgt: str) -> None:
    vmap = build_vocab_map(tables[src], tables[tgt], method="prefix", src_width=WIDTH, tgt_width=WIDTH, cache=False)
    lp = rows(3, 0)
    full = project_logprobs(lp, vmap)  # [3, WIDTH]
    pre = Preimages.of(vmap.index, WIDTH)
    pos = torch.arange(3)[:, None].expand(-1, WIDTH).reshape(-1)
    ids = torch.arange(WIDTH).repeat(3)
    got = pre.logprob(lp, pos, ids).view(3, WIDTH)
    assert torch.equal(torch.isfinite(got), torch.isfinite(full))
    fin = torch.isfinite(full)
    assert torch.allclose(got[fin], full[fin], atol=1e-5)
    assert bool(torch.isinf(pre.logprob(lp, torch.tensor([0]), torch.tensor([-1]))).all())
    chunked = pre.logprob(lp, pos, ids, max_gather=7).view(3, WIDTH)  # many small chunks: the same values
    assert torch.equal(torch.isfinite(chunked), torch.isfinite(got)) and torch.allclose(chunked[fin], got[fin])


def reference_support(full: list[torch.Tensor], present: torch.Tensor, targets: torch.Tensor,
                      k: int) -> list[dict[int, torch.Tensor]]:
    """The fit's support computed the slow way: full-width projected rows, top-k of each, union + target."""
    lp = torch.stack(full)  # [K, T, V]
    big_k, t, _ = lp.shape
    top = lp.topk(k, dim=-1).indices
    top = torch.where(present[..., None], top, targets[None, :, None].expand_as(top))
    cand = torch.cat([targets[:, None], top.permute(1, 0, 2).reshape(t, big_k * k)], dim=1)
    sub = lp.gather(-1, cand[None].expand(big_k, -1, -1))
    out: list[dict[int, torch.Tensor]] = []
    for row_c, row_v in zip(cand.tolist(), sub.permute(1, 0, 2), strict=True):  # per position: {token: values}
        seen: dict[int, torch.Tensor] = {}
        for j, c in enumerate(row_c):
            seen.setdefault(c, row_v[:, j])
        out.append(seen)
    return out


@pytest.mark.parametrize("fusion", ["product", "mixture"])
def test_restricted_problem_equals_full_projection_when_the_pool_is_the_vocabulary(
        tables: dict[str, Any], fusion: str) -> None:
    seed, other = tables["sentencepiece"], tables["bytebpe"]
    vmap = build_vocab_map(other, seed, method="prefix", src_width=WIDTH, tgt_width=WIDTH, cache=False)
    t, k = 6, 8
    seed_rows, other_rows = rows(t, 1), rows(t + 2, 2)
    index = [torch.arange(t), torch.tensor([0, 2, -1, 3, 5, 7])]
    present = torch.stack([torch.ones(t, dtype=torch.bool), index[1] >= 0])
    targets = torch.tensor([5, 17, 300, 42, 99, 250])
    pre = [Preimages.of(np.arange(WIDTH), WIDTH), Preimages.of(vmap.index, WIDTH)]
    got = restricted_problem([seed_rows, other_rows], index, present, targets, pre, k, WIDTH, fusion == "product")
    assert got.shape == (2, t, 2 * k + 1)
    proj = project_logprobs(other_rows[index[1].clamp_min(0)], vmap)
    if fusion == "product":  # holes: the row's smallest projected log-prob (fusion.fill_holes)
        proj = fill_holes(proj)
    ref = reference_support([seed_rows, proj], present, targets, k)
    for i in range(t):
        cols = [j for j in range(got.shape[2]) if bool(torch.isfinite(got[0, i, j]))]
        assert len(cols) == len(ref[i])  # the same number of distinct candidates
        assert torch.allclose(got[0, i, cols].sort().values, torch.stack([v[0] for v in ref[i].values()]).sort().values)
        if present[1, i]:
            mine = {round(float(got[0, i, j]), 5): float(got[1, i, j]) for j in cols}
            for v in ref[i].values():
                assert mine[round(float(v[0]), 5)] == pytest.approx(float(v[1]), abs=1e-5)
    assert float(got[0, 0, 0]) == pytest.approx(float(seed_rows[0, 5]))  # column 0 is the target
    problem = WeightProblem(nll=torch.zeros(2), log_probs=got, targets=torch.zeros(t, dtype=torch.long),
                            present=present, fusion=fusion)
    assert bool(torch.isfinite(problem.objective(torch.tensor([0.3, 0.7]))))


@pytest.mark.parametrize(("src", "tgt"), [("bytebpe", "sentencepiece"), ("sentencepiece", "bytebpe")])
def test_floor_equals_fill_holes_of_the_full_projection(tables: dict[str, Any], src: str, tgt: str) -> None:
    vmap = build_vocab_map(tables[src], tables[tgt], method="prefix", src_width=WIDTH, tgt_width=WIDTH, cache=False)
    pre = Preimages.of(vmap.index, WIDTH, vmap.exact)
    x = rows(16, 5, peaky=6.0)
    full = project_logprobs(x, vmap)
    want = torch.where(torch.isfinite(full), full, torch.tensor(float("inf"))).amin(-1)
    assert torch.allclose(floor_logprob(x, pre), want, atol=1e-5)
    for few in (1, 2):  # too few listed ids: rows are scanned, or fat seed tokens computed
        assert torch.allclose(floor_logprob(x, pre, few=few, small=1), want, atol=1e-5)
    assert pre.runs and all(lo < hi for lo, hi in pre.runs)
    scattered = np.where(np.arange(WIDTH) % 3 == 0, -1, vmap.index)  # > 64 runs of mapped ids: the masked path
    pre = Preimages.of(scattered, WIDTH)
    assert len(pre.runs) > 64
    full = project_logprobs(x, VocabMap(scattered, vmap.exact, vmap.distance, WIDTH, WIDTH, "test"))
    want = torch.where(torch.isfinite(full), full, torch.tensor(float("inf"))).amin(-1)
    assert torch.allclose(floor_logprob(x, pre), want, atol=1e-5)


def test_span_is_a_view_holding_the_rows() -> None:
    x = rows(6, 3)
    sub, local = span(x, torch.tensor([4, 2, 3]))
    assert sub.data_ptr() == x[2].data_ptr() and sub.shape[0] == 3
    assert torch.equal(sub[local], x[[4, 2, 3]])
    assert span(x, torch.zeros(0, dtype=torch.long))[0].shape == (0, WIDTH)


@pytest.mark.parametrize(("width", "k"), [(4096, 64), (4096, 200), (448, 64), (1000, 8)])
def test_block_topk_finds_the_same_set_as_topk(width: int, k: int) -> None:
    g = torch.Generator().manual_seed(width + k)
    x = torch.randn(7, width, generator=g) * 3
    x[0, :40] = 10.0 + torch.arange(40.0)  # the top entries crowded into few blocks
    got = block_topk(x, k).sort(-1).values
    assert torch.equal(got, x.topk(k, dim=-1).indices.sort(-1).values)
    low = block_topk(x, k, largest=False).sort(-1).values
    assert torch.equal(low, x.topk(k, dim=-1, largest=False).indices.sort(-1).values)
    view = x[:, 5:]  # a column slice (not contiguous), width not a multiple of the block
    assert torch.equal(block_topk(view, k).sort(-1).values, view.topk(k, dim=-1).indices.sort(-1).values)


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
