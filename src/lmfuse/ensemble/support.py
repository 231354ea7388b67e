"""The weight fit's candidate support, without projecting whole rows. Pure tensor maths.

Fitting weights evaluates the fused NLL of the prompt 21 times per member (packllm-opt). Over 150k-262k seed
vocabularies the fused normaliser runs over a per-position *support* instead: the target token plus each
present member's ``k`` most likely seed tokens (``Pack(support_k=64)``). Projecting every member's full
``[T, V_member]`` rows into ``[T, V_seed]`` just to pick those tokens cost seconds per prompt; here:

1. each member's ``pool`` most likely own ids per position (one ``topk`` on its rows) are mapped to seed ids;
2. the exact projected log-prob of a seed token (log-sum-exp over *all* member ids that map to it, its
   preimages, read from a CSR index of the vocabulary map) is computed only for those candidates, and the
   member's top ``k`` by that exact value are kept;
3. the union over members plus the target is the support, and every member's exact projected log-prob is
   gathered there the same way.

Values are exact (float noise aside). The selection differs from a full projection only where a seed token
outside a member's top ``pool`` own ids gathers, from many small preimages, more mass than its ``k``-th best;
with ``pool = 4k`` that is rare and only swaps near-tied low-mass candidates. Seed tokens a member cannot
express (no preimage) get the smallest projected log-prob of the row under the product rule ("as unlikely
as its least likely token", exactly ``fusion.fill_holes``), ``-inf`` under the mixture.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def logprob(self, rows: torch.Tensor, pos: torch.Tensor, seed_ids: torch.Tensor,
                max_gather: int = 1 << 22) -> torch.Tensor:
        """``[N]`` exact projected log-prob of seed id ``seed_ids[n]`` in member row ``rows[pos[n]]``.

        ``rows [P, V_member]`` log-probs; ``-inf`` where the seed id has no preimage (or ``seed_ids < 0``).
        Pairs are processed in chunks of at most ``max_gather`` preimages (memory).
        """
        ok = seed_ids >= 0
        ids = seed_ids.clamp_min(0)
        counts = torch.where(ok, self.count[ids], torch.zeros_like(ids))
        n = int(seed_ids.shape[0])
        ends = torch.cumsum(counts, 0)
        out, lo = [], 0
        while lo < n:  # the largest chunk of pairs within budget (at least one pair)
            base = int(ends[lo - 1]) if lo else 0
            hi = max(lo + 1, int(torch.searchsorted(ends, base + max_gather, right=True)))
            out.append(self._logprob(rows, pos[lo:hi], ids[lo:hi], counts[lo:hi]))
            lo = hi
        return torch.cat(out) if out else torch.zeros(0)

    def _logprob(self, rows: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        n = int(ids.shape[0])
        out = torch.full((n,), float("-inf"))
        total = int(counts.sum())
        if total == 0:
            return out
        owner = torch.repeat_interleave(torch.arange(n), counts)  # [total] which (pos, seed id) pair
        first = torch.cumsum(counts, 0) - counts
        offset = torch.arange(total) - first[owner]
        member_ids = self.order[self.start[ids][owner] + offset]
        vals = torch.take(rows, pos[owner] * rows.shape[-1] + member_ids).float()
        top = out.scatter_reduce(0, owner, vals, reduce="amax", include_self=True)
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        summed = torch.zeros(n).scatter_add(0, owner, torch.exp(vals - safe[owner]))
        return torch.where(summed > 0, torch.log(summed) + safe, out)


def _lowest_mapped(rows: torch.Tensor, pre: Preimages, few: int, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``few`` least likely mappable member ids per run of mapped ids, ``[P, n]``, and ``[P]`` a bound
    every mappable id *not* listed reaches (its log-prob is at least the bound). No full-width copy."""
    inf = torch.tensor(float("inf"))
    if len(pre.runs) <= 64:
        ids, bound = [], torch.full((rows.shape[0],), float("inf"))
        for lo, hi in pre.runs:
            got = lo + block_topk(rows[:, lo:hi], min(few, hi - lo), largest=False)
            ids.append(got)
            if hi - lo > few:
                bound = torch.minimum(bound, rows.gather(1, got).amax(-1))
        return torch.cat(ids, dim=1), bound
    mapped = pre.index >= 0
    got = torch.cat([block_topk(torch.where(mapped, rows[lo:lo + chunk], inf), few, largest=False)
                     for lo in range(0, rows.shape[0], chunk)])
    return got, rows.gather(1, got).amax(-1)


def floor_logprob(rows: torch.Tensor, pre: Preimages, few: int = 16, small: int = 64) -> torch.Tensor:
    """``[P]`` the smallest projected log-prob over the seed tokens each row can express: exactly the value
    ``fusion.fill_holes`` gives the holes of a full projection, found without projecting the row.

    A projected value is a log-sum-exp of member log-probs, so it is at least each of its preimages. The
    exact value of the seed token of one of the ``few`` least likely mappable ids (``ub``) bounds the floor
    from above; only seed tokens with a preimage below ``ub`` can go lower, and those preimages are among the
    listed ids whenever ``ub`` does not exceed the bound the unlisted ids reach (else the row is scanned).
    Seed tokens with many preimages are skipped when their representative preimage (the member token with
    the same surface) already reaches ``ub``.
    """
    p = rows.shape[0]
    low, bound = _lowest_mapped(rows, pre, few)  # [P, n], [P]
    n = low.shape[1]
    seeds = pre.index[low]  # [P, n]
    pos = torch.arange(p)[:, None].expand(-1, n)
    lean = pre.count[seeds] <= small
    exact = torch.full((p, n), float("inf"))
    exact[lean] = pre.logprob(rows, pos[lean], seeds[lean])
    done = lean.clone()
    ub = exact.amin(-1)
    fat_only = ~torch.isfinite(ub)  # every listed id lands on a fat seed token: compute those too
    if bool(fat_only.any()):
        sel = fat_only[:, None] & ~lean
        exact[sel] = pre.logprob(rows, pos[sel], seeds[sel])
        done |= sel
        ub = exact.amin(-1)
    # Seed tokens with a preimage below ub: among the listed ids (covered rows), else found by a scan.
    covered = ub <= bound
    cand_r, cand_s = [], []
    sel = covered[:, None] & ~done & (rows.gather(1, low) < ub[:, None])
    cand_r.append(pos[sel])
    cand_s.append(seeds[sel])
    for i in torch.nonzero(~covered).squeeze(1).tolist():
        b = torch.nonzero(rows[i] < ub[i]).squeeze(1)
        b = b[pre.index[b] >= 0]
        cand_r.append(torch.full_like(b, i))
        cand_s.append(pre.index[b])
    r, a = torch.cat(cand_r), torch.cat(cand_s)
    if len(r):
        # Skip seed tokens whose representative preimage already reaches ub (their value is >= it).
        keep = torch.take(rows, r * rows.shape[-1] + pre.rep[a]) < ub[r]
        r, a = r[keep], a[keep]
    floor = ub
    if len(r):
        floor = floor.scatter_reduce(0, r, pre.logprob(rows, r, a), reduce="amin", include_self=True)
    bad = torch.nonzero(~torch.isfinite(floor)).squeeze(1)
    for i in bad.tolist():  # -inf log-probs (never from finite logits): min over every expressible token
        ids = torch.nonzero(pre.count > 0).squeeze(1)
        vals = pre.logprob(rows, torch.full_like(ids, i), ids)
        fin = vals[torch.isfinite(vals)]
        floor[i] = fin.min() if len(fin) else 0.0
    return floor


def block_topk(x: torch.Tensor, k: int, block: int = 32, largest: bool = True) -> torch.Tensor:
    """``[P, k]`` indices of each row's ``k`` largest (or smallest) entries of ``x [P, V]`` (as a set; ties
    broken arbitrarily).

    Exact and ~10x cheaper than ``topk`` over 150k-262k columns: a row's top ``k`` entries lie in the ``k``
    blocks (of ``block`` columns) with the largest maxima, since fewer than ``k`` blocks can hold an entry
    larger than any top-``k`` entry. So: block maxima, top ``k`` blocks, ``topk`` inside them only.
    """
    p, v = x.shape
    n = v // block
    if n <= k:
        return x.topk(k, dim=-1, largest=largest).indices
    blocks = x[:, : n * block].view(p, n, block)  # a view even of a column slice; the tail is kept whole
    extreme = blocks.amax(-1) if largest else blocks.amin(-1)
    best = extreme.topk(k, dim=-1, largest=largest).indices  # [P, k]
    cols = (best[..., None] * block + torch.arange(block)).reshape(p, k * block)  # [P, k*block]
    if v > n * block:
        cols = torch.cat([cols, torch.arange(n * block, v).expand(p, -1)], dim=1)
    inner = x.gather(-1, cols).topk(k, dim=-1, largest=largest).indices
    return cols.gather(-1, inner)


def member_top(rows: torch.Tensor, pre: Preimages, k: int, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[P, k]`` the seed ids with the highest exact projected log-prob among the seed images of each row's
    ``pool`` most likely member ids, and those log-probs (``-1`` / ``-inf`` pad rows with fewer)."""
    p = rows.shape[0]
    own = block_topk(rows, min(pool, rows.shape[-1]))  # [P, pool]
    seed_ids = pre.index[own]  # [P, pool]
    # One slot per distinct seed id per row: sort, mark repeats.
    seed_sorted = torch.sort(seed_ids, dim=-1).values
    repeat = torch.cat([torch.zeros(p, 1, dtype=torch.bool), seed_sorted[:, 1:] == seed_sorted[:, :-1]], dim=1)
    seed_sorted = seed_sorted.masked_fill(repeat, -1)
    pos = torch.arange(p)[:, None].expand_as(seed_sorted).reshape(-1)
    lp = pre.logprob(rows, pos, seed_sorted.reshape(-1)).view(p, -1)
    best = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return seed_sorted.gather(-1, best.indices).masked_fill(~torch.isfinite(best.values), -1), best.values


def restricted_problem(rows: Sequence[torch.Tensor], index: Sequence[torch.Tensor], present: torch.Tensor,
                       targets: torch.Tensor, pre: Sequence[Preimages], k: int, pool: int,
                       product: bool) -> torch.Tensor:
    """``[K, T, S]`` member log-probs over the support (column 0 = the target), ``S = K*k + 1``.

    ``rows[m] [T_m, V_m]``: member m's log-prob rows; ``index[m] [T]``: its row for each fitted seed position
    (-1 where it abstains, ``present[m]`` False); ``targets [T]`` seed ids. Repeated candidates in a row get
    ``-inf`` in every member so no token counts twice; absent positions get 0 (masked by the objective).
    """
    big_k, t = present.shape
    subs, ats, tops, own = [], [], [], []
    for m in range(big_k):
        at = torch.nonzero(present[m]).squeeze(1)
        sub, local = span(rows[m], index[m][at])  # sub [n, V_m] a view; its row local[i] is the i-th present one
        top = targets[:, None].repeat(1, k)
        vals = torch.full((len(at), k), float("-inf"))
        if len(at):
            ids, best = member_top(sub, pre[m], k, pool)
            ids, best = ids[local], best[local]
            # Slots without a candidate repeat the target (column 0), so they are duplicates below.
            top[at, : ids.shape[1]] = torch.where(ids >= 0, ids, targets[at][:, None])
            vals[:, : ids.shape[1]] = best
        subs.append((sub, local))
        ats.append(at)
        tops.append(top)
        own.append(vals)
    cand = torch.cat([targets[:, None], *tops], dim=1)  # [T, S]
    order = torch.sort(cand, dim=1, stable=True)
    dup_sorted = torch.cat([torch.zeros(t, 1, dtype=torch.bool), order.values[:, 1:] == order.values[:, :-1]], 1)
    dup = torch.zeros_like(cand, dtype=torch.bool).scatter_(1, order.indices, dup_sorted)  # the target is never a dup
    s = cand.shape[1]
    out = torch.zeros(big_k, t, s)
    for m, ((sub, local), at) in enumerate(zip(subs, ats, strict=True)):
        if not len(at):
            continue
        lp = torch.full((len(at), s), float("-inf"))
        cols = slice(1 + m * k, 1 + (m + 1) * k)
        lp[:, cols] = own[m]  # the member's own top tokens: values already exact
        need = ~dup[at]
        need[:, cols] = False
        rows_i, cols_i = torch.nonzero(need, as_tuple=True)
        lp[rows_i, cols_i] = pre[m].logprob(sub, local[rows_i], cand[at][rows_i, cols_i])
        if product:
            lp = torch.where(torch.isfinite(lp), lp, floor_logprob(sub, pre[m])[local][:, None])
        out[m, at] = lp
    return out.masked_fill(dup[None], float("-inf"))


def span(rows: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows[lo:hi], idx - lo)`` with ``[lo, hi)`` the smallest range holding ``idx``: a view, never a copy of
    ``[n, V]`` rows (the fitted positions are the prompt's last ones, so the range is about ``len(idx)``)."""
    if not len(idx):
        return rows[:0], idx
    lo, hi = int(idx.min()), int(idx.max()) + 1
    return rows[lo:hi], idx - lo
