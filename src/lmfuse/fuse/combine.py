"""Stage 3: fuse the candidates' aligned top-k distributions into one teacher per target token.

Candidates are the target itself (first, as in the paper's "ref model") and the aligned sources.
Each candidate gets a *score* (lower is better) and a registered fusion function turns scores into
weights; the teacher is the weighted mixture of the candidates' top-k distributions, each first
renormalised over its k entries (the reference's softmax over the top-10 logits at T = 1).

Fusion functions (``COMBINE_FUNCTIONS``; the recipe's ``combine.function``), ``scores [M, ...] -> weights [M, ...]`` over the candidate axis 0:

* ``min-ce`` (the paper's MinCE): weight 1 on the lowest score; **ties go to the lowest index**, i.e.
  the target. Scores are compared in float32 (the reference uses bf16, which turns gaps below ~0.4 %
  into ties).
* ``avg-ce`` (the reference's AvgCE): ``softmax_k(exp(-CE_k))`` — a softmax *over exp(-CE)*, which
  is nearly uniform: CE = 2.0 / 2.5 / 3.0 gives 0.349 / 0.331 / 0.320.
* ``softmax-ce``: ``softmax_k(-CE_k / tau)`` with ``tau = 1`` — a weighting that actually prefers
  the better candidate, for when "weighted" should mean weighted.

Granularity: ``sequence`` (the paper: one score per row; the reference's packed 2048-token block)
or ``token`` (per target token, from the aligned group's NLL per byte; a candidate whose entry fell
back to one-hot / mask is not a candidate at that token).

CE normalisation for ``sequence``: ``byte`` (total NLL / UTF-8 bytes of the row; comparable across
tokenizers — the default) or ``token`` (mean NLL per own token, as the reference, which favours
tokenizers that cut text finer).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from lmfuse.config import OneOf
from lmfuse.errors import CorruptFileError
from lmfuse.fuse import store
from lmfuse.fuse.config import section
from lmfuse.fuse.sharded import sharded_stage
from lmfuse.registry import Registry

FusionFn = Callable[[torch.Tensor], torch.Tensor]
COMBINE_FUNCTIONS: Registry[FusionFn] = Registry("fusion function")
GRANULARITIES = ("sequence", "token")
CE_NORMS = ("byte", "token")


@section
class CombineConfig:
    """The recipe's ``combine`` section."""

    function: Annotated[str, OneOf(COMBINE_FUNCTIONS)] = "min-ce"
    """Fusion function: ``min-ce``, ``avg-ce`` (the reference's nearly uniform weights) or ``softmax-ce``."""
    granularity: Annotated[str, OneOf(GRANULARITIES, "fusion granularity")] = "sequence"
    """``sequence`` (the paper) or ``token``."""
    ce_norm: Annotated[str, OneOf(CE_NORMS, "CE normalisation")] = "byte"
    """How sequence CEs are compared: ``byte`` (nats per UTF-8 byte) or ``token`` (the reference)."""
    include_target: bool = True
    """The target is a candidate too (the paper's ref model)."""


@COMBINE_FUNCTIONS.register("min-ce")
def min_ce(scores: torch.Tensor) -> torch.Tensor:
    """One-hot weights ``[M, ...]`` on the lowest score; ties go to the first candidate (the target)."""
    best = torch.argmin(scores, dim=0, keepdim=True)  # argmin returns the first of equal minima
    return torch.zeros_like(scores).scatter_(0, best, 1.0)


@COMBINE_FUNCTIONS.register("avg-ce")
def avg_ce(scores: torch.Tensor) -> torch.Tensor:
    """The reference AvgCE: ``softmax(exp(-CE))`` over candidates (nearly uniform; kept for fidelity)."""
    return torch.softmax(torch.exp(-scores), dim=0)


@COMBINE_FUNCTIONS.register("softmax-ce")
def softmax_ce(scores: torch.Tensor) -> torch.Tensor:
    """``softmax(-CE)`` over candidates: a weighting that follows the CE gaps."""
    return torch.softmax(-scores, dim=0)


def fusion_weights(name: str, scores: torch.Tensor) -> torch.Tensor:
    """Weights ``[M, ...]`` (float32, summing to 1 over axis 0) from scores ``[M, ...]``.

    Non-finite scores (NaN, or +inf for a candidate that has nothing at a token) mark non-candidates:
    they get weight 0. Where no candidate is left, the first one (the target) gets weight 1.
    """
    fn = COMBINE_FUNCTIONS.get(name)
    scores = scores.float()
    valid = torch.isfinite(scores)
    big = torch.finfo(torch.float32).max / 4
    weights = fn(torch.where(valid, scores, torch.full_like(scores, big))) * valid
    total = weights.sum(0, keepdim=True)
    first = torch.zeros_like(weights)
    first[0] = 1.0
    return torch.where(total > 0, weights / total.clamp_min(1e-30), first)


def merge_duplicates(ids: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge equal ids along the last axis by logsumexp; sort by log-prob, descending.

    Args: ``ids`` ``[..., n]`` int64 (-1 = none), ``logp`` ``[..., n]`` float32 (-inf = none).
    Returns ``(ids, logp)`` of the same shape; freed slots hold -1 / -inf at the end.
    """
    logp = torch.where(ids < 0, torch.full_like(logp, -torch.inf), logp)
    ids = torch.where(torch.isneginf(logp), torch.full_like(ids, -1), ids)
    s_ids, order = torch.sort(ids, dim=-1)
    s_lp = torch.gather(logp, -1, order)
    starts = torch.ones_like(s_ids, dtype=torch.bool)
    starts[..., 1:] = s_ids[..., 1:] != s_ids[..., :-1]
    group = torch.cumsum(starts.long(), dim=-1) - 1  # [..., n] slot of each entry's merged id
    peak = torch.full_like(s_lp, -torch.inf).scatter_reduce(-1, group, s_lp, reduce="amax")
    safe_peak = torch.where(torch.isneginf(peak), torch.zeros_like(peak), peak)
    total = torch.zeros_like(s_lp).scatter_add(-1, group, torch.exp(s_lp - torch.gather(safe_peak, -1, group)))
    merged = torch.where(total > 0, safe_peak + torch.log(total), torch.full_like(total, -torch.inf))
    merged_ids = torch.full_like(s_ids, -1).scatter(-1, group, s_ids)
    merged = torch.where(merged_ids < 0, torch.full_like(merged, -torch.inf), merged)
    out_lp, order = torch.sort(merged, dim=-1, descending=True, stable=True)  # ties: ascending id
    out_ids = torch.gather(merged_ids, -1, order)
    out_ids = torch.where(torch.isneginf(out_lp), torch.full_like(out_ids, -1), out_ids)
    return out_ids, out_lp


def mix_topk(ids: torch.Tensor, logp: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused teacher ``log sum_m w_m p_m`` over the union of the candidates' top-k.

    Args:
        ids: ``[M, T, k]`` target-vocabulary ids (-1 = none).
        logp: ``[M, T, k]`` log-probabilities (-inf = none); each candidate is renormalised over its k.
        weights: ``[M, T]`` candidate weights (sum 1 over M).

    Returns:
        ``(ids [T, M*k], logp [T, M*k])``: merged, sorted descending, padded with -1 / -inf. A position
        where every weighted candidate is empty stays empty (it drops out of the fusion loss).
    """
    logp = torch.where(ids < 0, torch.full_like(logp, -torch.inf), logp.float())
    norm = torch.logsumexp(logp, dim=-1, keepdim=True)
    norm = torch.where(torch.isneginf(norm), torch.zeros_like(norm), norm)
    log_w = torch.log(weights.float())[..., None]  # log 0 = -inf drops the candidate
    mixed = logp - norm + log_w
    M, T, k = ids.shape
    flat_ids = ids.permute(1, 0, 2).reshape(T, M * k)
    flat_lp = mixed.permute(1, 0, 2).reshape(T, M * k)
    out_ids, out_lp = merge_duplicates(flat_ids, flat_lp)
    # Renormalise over what is left: candidates that were empty at a position take no mass.
    total = torch.logsumexp(out_lp, dim=-1, keepdim=True)
    out_lp = torch.where(torch.isneginf(total), out_lp, out_lp - total)
    return out_ids, out_lp


def candidate_scores(shards: list[store.Shard], r: int, granularity: str, ce_norm: str) -> torch.Tensor:
    """Scores of every candidate for row ``r``: ``[M]`` (sequence) or ``[M, T]`` (token), float32."""
    if granularity == "sequence":
        if ce_norm == "byte":
            vals = [float(s.rows["nll_sum"][r]) / max(int(s.rows["n_bytes"][r]), 1) for s in shards]
        else:
            vals = [float(s.rows["nll_sum"][r]) / max(int(s.rows["n_tokens"][r]), 1) for s in shards]
        return torch.tensor(vals, dtype=torch.float32)
    rows = []
    for s in shards:
        score = torch.as_tensor(s.row(r, "score").astype(np.float32))
        aligned = torch.as_tensor(s.row(r, "aligned").astype(bool))
        rows.append(torch.where(aligned, score, torch.full_like(score, torch.inf)))
    return torch.stack(rows)


def fuse_shard(cands: list[store.Shard], target: store.Shard, function: str, granularity: str, ce_norm: str,
               tgt_width: int) -> store.Shard:
    """The fused teacher for one shard: per target token, the mixture of the candidates' entries."""
    for c in cands:
        if not np.array_equal(c.rows["hash"], target.rows["hash"]) or not np.array_equal(c.row_ptr, target.row_ptr):
            raise CorruptFileError(f"candidate {c.meta.get('source')!r} does not match the target's rows")
    parts: dict[str, list[np.ndarray]] = {"ids": [], "topk_ids": [], "topk_logp": []}
    weights_rows = []
    for r in range(target.num_rows):
        ids = torch.stack([torch.as_tensor(store.unpack_ids(c.row(r, "topk_ids"))) for c in cands])
        logp = torch.stack([torch.as_tensor(c.row(r, "topk_logp").astype(np.float32)) for c in cands])
        T = ids.shape[1]
        scores = candidate_scores(cands, r, granularity, ce_norm)
        w = fusion_weights(function, scores)
        w = w[:, None].expand(-1, T) if w.dim() == 1 else w
        f_ids, f_lp = mix_topk(ids, logp, w)
        parts["ids"].append(store.unpack_ids(target.row(r, "ids")))
        parts["topk_ids"].append(f_ids.numpy())
        parts["topk_logp"].append(f_lp.numpy())
        weights_rows.append(w.mean(dim=1).numpy() if T else np.zeros(len(cands), np.float32))
    width = max((int((p >= 0).sum(1).max()) for p in parts["topk_ids"] if len(p)), default=1)
    width = max(width, 1)
    dtypes = {"ids": store.id_dtype(tgt_width), "topk_ids": store.id_dtype(tgt_width),
              "topk_logp": np.float16, "key": np.int64, "hash": np.int64, "weights": np.float32}
    tokens = {"ids": [store.pack_ids(p, tgt_width) for p in parts["ids"]],
              "topk_ids": [store.pack_ids(p[:, :width], tgt_width) for p in parts["topk_ids"]],
              "topk_logp": [p[:, :width] for p in parts["topk_logp"]]}
    rows = {"key": target.rows["key"], "hash": target.rows["hash"], "weights": weights_rows}
    meta = {"function": function, "granularity": granularity, "ce_norm": ce_norm, "width": str(tgt_width),
            "prefix_token_id": target.meta.get("prefix_token_id", ""),
            "candidates": ",".join(c.meta.get("source", "") for c in cands)}
    return store.Shard.from_rows(rows, tokens, meta, dtypes)


def combine(cand_dirs: list[Path], target_dir: Path, out_dir: Path, cfg: CombineConfig,
            progress: bool = True) -> Path:
    """Fuse the aligned candidates (target first) shard by shard into ``out_dir`` (resumable)."""
    tgt_man = store.read_json(target_dir / "manifest.json")
    config = {"stage": "combine", "candidates": [str(p.name) for p in cand_dirs], "function": cfg.function,
              "granularity": cfg.granularity, "ce_norm": cfg.ce_norm, "corpus": tgt_man["corpus"], "format": 1}
    width = int(tgt_man["width"])

    def make_shard(s: int, path: Path) -> None:
        cands = [store.read_shard(store.shard_path(d, s)) for d in cand_dirs]
        target = store.read_shard(store.shard_path(target_dir, s))
        store.write_shard(path, fuse_shard(cands, target, cfg.function, cfg.granularity, cfg.ce_norm, width))

    sharded_stage(out_dir, config, tgt_man["num_shards"], make_shard, desc=f"combine ({cfg.function}, "
                  f"{cfg.granularity})", progress=progress,
                  manifest=lambda: {"width": width, "prefix_token_id": tgt_man["prefix_token_id"]})
    return out_dir
