"""A member -> seed vocabulary map inverted (CSR), to project a member's rows into the seed's vocabulary
while decoding (`lmfuse.ensemble.generate`). Pure tensor maths.

Scoring and the weight fit read every member as an exact byte-level model (`lmfuse.ensemble.bytelevel`)
and need no shared vocabulary; decoding emits the seed's tokens, so each other member's next-token row is
moved into the seed's vocabulary: a seed token receives the log-sum-exp of its preimages (the member ids
whose longest seed prefix it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Preimages:
    """A member -> seed vocabulary map inverted as CSR: the member ids landing on each seed id."""

    index: torch.Tensor  # [V_member] long: seed id of each member id, -1 = unmapped
    order: torch.Tensor  # [M] long: mapped member ids, grouped by seed id
    start: torch.Tensor  # [V_seed] long: first position in ``order`` of each seed id's preimages
    count: torch.Tensor  # [V_seed] long: number of preimages (0 = the member cannot express the token)
    runs: list[tuple[int, int]]  # maximal ranges [lo, hi) of mapped member ids (few: specials sit in blocks)
    rep: torch.Tensor  # [V_seed] long: a representative preimage (the exact-surface one when there is one; 0 if none)
    hit: torch.Tensor  # [H] long: the seed ids with at least one preimage
    seg: torch.Tensor  # [M] long: slot in ``hit`` of each entry of ``order``

    @classmethod
    def of(cls, index: np.ndarray, seed_width: int, exact: np.ndarray | None = None) -> Preimages:
        """From a map's ``index`` (member id -> seed id); ``exact`` (bool per member id) picks representatives."""
        idx = np.asarray(index, dtype=np.int64)
        idx = np.where(idx < seed_width, idx, -1)
        mapped = np.flatnonzero(idx >= 0)
        order = mapped[np.argsort(idx[mapped], kind="stable")]
        count = np.bincount(idx[mapped], minlength=seed_width)[:seed_width]
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        edges = np.diff(np.concatenate([[0], (idx >= 0).astype(np.int8), [0]]))
        runs = list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))
        rep = np.zeros(seed_width, dtype=np.int64)
        has = count > 0
        rep[has] = order[start[has]]
        if exact is not None:  # the exact-surface preimage, usually the likeliest of its seed token's preimages
            twins = mapped[np.asarray(exact, dtype=bool)[: len(idx)][mapped]]
            rep[idx[twins]] = twins
        hit = np.flatnonzero(count > 0)
        seg = np.repeat(np.arange(len(hit)), count[hit])
        return cls(torch.from_numpy(idx), torch.from_numpy(order), torch.from_numpy(start),
                   torch.from_numpy(count), runs, torch.from_numpy(rep), torch.from_numpy(hit), torch.from_numpy(seg))

    def project(self, rows: torch.Tensor, fill: bool) -> torch.Tensor:
        """``[N, V_member] -> [N, V_seed]``: the full projection (``alignment.project_logprobs``), followed by
        ``fusion.fill_holes`` when ``fill``, computed over the expressible seed tokens only (the same sums in
        the same order), so a wide seed vocabulary is written once instead of scattered, scanned and filled."""
        hit, seg = self.hit, self.seg
        n = rows.shape[0]
        vals = rows[:, self.order].float()  # [N, M]
        idx = seg.expand(n, -1)
        top = torch.full((n, len(hit)), float("-inf")).scatter_reduce(1, idx, vals, reduce="amax", include_self=True)
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        summed = torch.zeros_like(top).scatter_add(1, idx, torch.exp(vals - safe.gather(1, idx)))
        lp = torch.where(summed > 0, torch.log(summed) + safe, torch.full_like(top, float("-inf")))  # [N, H]
        width = int(self.count.shape[0])
        if not fill:
            return torch.full((n, width), float("-inf")).index_copy_(1, hit, lp)
        finite = torch.isfinite(lp)
        floor = torch.where(finite, lp, torch.tensor(float("inf"))).amin(-1, keepdim=True) if len(hit) else \
            torch.full((n, 1), float("inf"))
        floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))  # no finite entry: 0 (fill_holes)
        return floor.expand(n, width).clone().index_copy_(1, hit, torch.where(finite, lp, floor))
