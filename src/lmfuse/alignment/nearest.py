"""Exact nearest string by Levenshtein distance, ties to the lowest id, without a query × vocabulary scan.

``nearest_by_edit_distance`` gives, for every query, the same answer as a brute-force scan (tested against one):
the smallest distance, and among the candidates at that distance the lowest id. It is MinED's search
(``vocab.py``), in two stages:

1. **Distance <= 1 by hash joins** (``_within_one``): exact matches, one substitution, one insertion or deletion.
2. **A gram-filtered search with a growing bound d** (``_filtered_search``). Two facts say which candidates can be
   within d of a query q:

   * length: ``ed(q, c) >= |len q - len c|``;
   * shared grams (Ukkonen's q-gram lemma, with multiplicities): one edit removes at most one character and at
     most two bigrams of q, so ``ed(q, c) <= d`` leaves at least ``len q - d`` characters and ``len q - 1 - 2d``
     bigrams of q in c. A candidate that shares ``t`` of q's ``m`` grams contains one of *any* ``m - t + 1`` of
     them ("prefix filtering"), so only the candidates holding one of q's ``m - t + 1`` rarest grams, within the
     length window, are compared: characters or bigrams, whichever family gives the smaller pool.

   Every candidate within d is compared, so a best distance <= d is the global minimum with all its ties present;
   queries whose best is above d retry with a larger d (or with their best found so far, which is then exact).
   When d >= len q no character is required: candidates sharing none are then at distance max(len q, len c),
   and one *fallback* candidate (the lowest (max(len q, len c), id)) stands for all of them. A query that needs
   to share at most one character, and that a previous pass proved is not nearer than d, scans its length
   window in id order instead and stops at the first candidate at distance d (usually a short, low-id token).

A gram is a (string, k) feature: "the k-th occurrence of this character (bigram)", so counting shared features
counts the multiset intersection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

_COUNT_BITS = 16  # feature = gram code << 16 | occurrence number (strings are shorter than 65,536 characters)
_LEN_BITS = 20  # posting key = feature index << 20 | candidate length
_MAX_LEN = (1 << _LEN_BITS) - 1
_CELLS = 4_000_000  # distance-matrix cells per cdist call (16 MB of int32)
_FIRST_SCAN = 1024  # candidates in the first cdist call of an id-order scan (doubling after each)
_BIG_BLOCK = 100_000  # cells above which a cdist call is worth spreading over worker threads
_NONE = np.iinfo(np.int64).max
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multipliers for the 64-bit string hashes of _within_one
_TAG = np.uint64(0xC2B2AE3D27D4EB4F)


def _lengths(texts: list[str]) -> np.ndarray:
    return np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))


def _grams(texts: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, feature)`` int64 rows: each character (size 1) or bigram (size 2) of each text, numbered by
    occurrence within its text (``feature = code << 16 | k`` for the k-th occurrence)."""
    lengths = _lengths(texts)
    if lengths.size and int(lengths.max()) >= 1 << _COUNT_BITS:
        raise ValueError(f"edit-distance search takes strings shorter than {1 << _COUNT_BITS} characters, "
                         f"got one of {int(lengths.max())}")
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    if size == 2:
        inside = owner[1:] == owner[:-1]  # a bigram never straddles two texts
        codes = ((codes[:-1] << 21) | codes[1:])[inside]  # code points fit in 21 bits
        owner = owner[:-1][inside]
    order = np.lexsort((codes, owner))
    owner, codes = owner[order], codes[order]
    starts = np.ones(owner.size, dtype=bool)
    starts[1:] = (owner[1:] != owner[:-1]) | (codes[1:] != codes[:-1])
    pos = np.arange(owner.size, dtype=np.int64)
    k = pos - np.maximum.accumulate(np.where(starts, pos, 0)) + 1
    return owner, (codes << _COUNT_BITS) | k


@dataclass(frozen=True)
class _Postings:
    """For one gram size, the candidates holding each feature, sorted by (feature, length, id rank): the
    candidates of one feature within a length window are one contiguous slice."""

    features: np.ndarray  # int64 [F], sorted unique features
    key: np.ndarray  # int64 [P], feature index << 20 | candidate length, sorted
    rank: np.ndarray  # int64 [P], candidate of each posting (its position in id order)
    texts: list[str]  # [P], candidate text of each posting (cdist takes a list slice)

    @classmethod
    def build(cls, cands: list[str], size: int) -> _Postings:
        owner, feature = _grams(cands, size)
        features, fidx = np.unique(feature, return_inverse=True)
        key = (fidx.astype(np.int64) << _LEN_BITS) | np.minimum(_lengths(cands)[owner], _MAX_LEN)
        order = np.lexsort((owner, key))
        rank = owner[order]
        return cls(features, key[order], rank, [cands[i] for i in rank.tolist()])

    def windows(self, feature: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start, end)`` posting slices of each feature among candidates of length lo..hi (empty if unknown)."""
        fidx = np.clip(np.searchsorted(self.features, feature), 0, max(self.features.size - 1, 0))
        known = self.features[fidx] == feature if self.features.size else np.zeros(feature.size, dtype=bool)
        base = fidx << _LEN_BITS
        start = np.searchsorted(self.key, base | np.clip(lo, 0, _MAX_LEN), side="left")
        end = np.searchsorted(self.key, base | np.clip(hi, 0, _MAX_LEN), side="right")
        end = np.where(known & (hi >= lo), end, start)
        return start, end


@dataclass(frozen=True)
class _Pool:
    """One gram family's filter for a set of queries at bound d: posting slices to compare, per row of
    ``query``; ``size`` [queries]: how many candidates that compares; ``empty`` [queries]: the family proves no
    candidate is within d."""

    query: np.ndarray
    start: np.ndarray
    end: np.ndarray
    size: np.ndarray
    empty: np.ndarray


def _pool(postings: _Postings, rows: tuple[np.ndarray, np.ndarray], lo: np.ndarray, hi: np.ndarray,
          required: np.ndarray) -> _Pool:
    """Prefix filter: ``required[q]`` of q's features must be shared (``rows``: (query, feature), queries indexed
    like ``lo``/``hi``, the candidate lengths in reach), so the candidates of its ``m - required + 1`` rarest
    features are compared (m: the features any candidate in the length window holds). ``required <= 0``: every
    feature (no filter)."""
    owner, feature = rows
    n = lo.size
    start, end = postings.windows(feature, lo[owner], hi[owner])
    count = end - start
    held = count > 0
    owner, start, end, count = owner[held], start[held], end[held], count[held]
    m = np.bincount(owner, minlength=n)
    order = np.lexsort((count, owner))  # each query's features, rarest first
    owner, start, end, count = owner[order], start[order], end[order], count[order]
    first = np.searchsorted(owner, np.arange(n))
    nth = np.arange(owner.size) - first[owner]
    need = np.where(required > 0, m - required + 1, m)
    keep = nth < need[owner]
    size = np.bincount(owner[keep], weights=count[keep], minlength=n).astype(np.int64)
    return _Pool(owner[keep], start[keep], end[keep], size, required > m)


def _fallback_by_length(clen: np.ndarray) -> np.ndarray:
    """``fallback[L]`` (L = 0..max+1): the candidate (index in id order) minimising (max(L, len c), id), which
    beats every candidate sharing no character with a query of length L: the lowest id of length <= L, else the
    lowest id of the shortest longer length."""
    max_len = int(clen.max(initial=0))
    first_of_len = np.full(max_len + 2, _NONE, dtype=np.int64)
    np.minimum.at(first_of_len, clen, np.arange(clen.size, dtype=np.int64))
    upto = np.minimum.accumulate(first_of_len)
    next_longer = np.full(max_len + 2, -1, dtype=np.int64)
    for length in range(max_len, -1, -1):
        longer = first_of_len[length + 1]
        next_longer[length] = longer if longer != _NONE else next_longer[length + 1]
    return np.where(upto != _NONE, upto, next_longer)


@dataclass(frozen=True)
class _DeletionKeys:
    """64-bit polynomial hashes of strings (code points + 1 as digits, mod 2**64) and of their one-character
    deletions: ``full[k]`` hashes text k; ``deleted[r]`` hashes text ``owner[r]`` without its character ``pos[r]``.
    A collision can only make ``_within_one`` verify a wrong winner and leave that query to the exact stage."""

    full: np.ndarray  # int64 [texts]
    deleted: np.ndarray  # int64 [rows]
    owner: np.ndarray  # int64 [rows]
    pos: np.ndarray  # int64 [rows]

    @classmethod
    def of(cls, texts: list[str]) -> _DeletionKeys:
        lengths = _lengths(texts)
        codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        codes = codes.astype(np.uint64) + np.uint64(1)  # no zero digit: "\0a" and "a" hash apart
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        longest = int(lengths.max(initial=0))
        power = np.ones(longest + 1, dtype=np.uint64)  # power[k] = _BASE ** k
        power[1:] = np.cumprod(np.full(longest, _BASE, dtype=np.uint64))
        full = np.zeros(len(texts), dtype=np.uint64)
        deleted: list[np.ndarray] = [np.zeros(0, np.uint64)]
        owner: list[np.ndarray] = [np.zeros(0, np.int64)]
        pos: list[np.ndarray] = [np.zeros(0, np.int64)]
        for length in np.unique(lengths).tolist():  # one [texts, length] block per length
            who = np.flatnonzero(lengths == length)
            digits = codes[starts[who][:, None] + np.arange(length)]
            prefix = np.zeros((who.size, length + 1), dtype=np.uint64)  # prefix[:, i]: hash of the first i
            for i in range(length):
                prefix[:, i + 1] = prefix[:, i] * _BASE + digits[:, i]
            whole = prefix[:, length]
            full[who] = whole
            tail = power[length - 1::-1][:length]  # _BASE ** (length - 1 - i)
            # without character i: (first i) * B^(length-1-i) + (the rest after i)
            deleted.append((prefix[:, :-1] * tail + (whole[:, None] - prefix[:, 1:] * tail)).ravel())
            owner.append(np.repeat(who, length))
            pos.append(np.tile(np.arange(length, dtype=np.int64), who.size))
        return cls(full.view(np.int64), np.concatenate(deleted).view(np.int64), np.concatenate(owner),
                   np.concatenate(pos))

    def whole(self) -> tuple[np.ndarray, np.ndarray]:
        return self.full, np.arange(self.full.size, dtype=np.int64)

    def deletions(self) -> tuple[np.ndarray, np.ndarray]:
        return self.deleted, self.owner

    def positional(self) -> tuple[np.ndarray, np.ndarray]:
        """Deletions tagged with their position (equal keys: the strings differ by one substitution there)."""
        tagged = self.deleted.view(np.uint64) ^ ((self.pos.astype(np.uint64) + np.uint64(1)) * _TAG)
        return tagged.view(np.int64), self.owner


def _min_rank_by_key(qkeys: tuple[np.ndarray, np.ndarray], ckeys: tuple[np.ndarray, np.ndarray],
                     nq: int) -> np.ndarray:
    """For each query, the smallest candidate index over all keys it shares with a candidate (int64 max if
    none). Only the minimum per key is kept, so short keys shared by thousands of strings cost nothing extra."""
    out = np.full(nq, _NONE, dtype=np.int64)
    (ch, co), (qh, qo) = ckeys, qkeys
    if ch.size == 0 or qh.size == 0:
        return out
    order = np.lexsort((co, ch))
    ch, cr = ch[order], co[order]
    first = np.ones(ch.size, dtype=bool)
    first[1:] = ch[1:] != ch[:-1]
    uk, umin = ch[first], cr[first]
    pos = np.clip(np.searchsorted(uk, qh), 0, uk.size - 1)
    hit = uk[pos] == qh
    np.minimum.at(out, qo[hit], umin[pos[hit]])
    return out


def _within_one(queries: list[str], cands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest candidate (``cands`` in id order) at Levenshtein distance <= 1, by hash joins; -1 where none.

    ed(q, c) <= 1 exactly when q and c agree after deleting the same position (a substitution), or one is the
    other with one character deleted (an insertion). Every key match is therefore a true match (up to hash
    collisions), and each key only needs its first candidate. The winner is verified, so a collision only sends
    its query on to the exact stage."""
    nq = len(queries)
    qk, ck = _DeletionKeys.of(queries), _DeletionKeys.of(cands)
    same = _min_rank_by_key(qk.whole(), ck.whole(), nq)  # distance 0 comes first
    best = np.minimum.reduce([
        _min_rank_by_key(qk.positional(), ck.positional(), nq),
        _min_rank_by_key(qk.deletions(), ck.whole(), nq),
        _min_rank_by_key(qk.whole(), ck.deletions(), nq),
    ])
    best_c = np.full(nq, -1, dtype=np.int64)
    best_d = np.full(nq, -1, dtype=np.int32)
    for q in np.flatnonzero(same != _NONE).tolist():
        if queries[q] == cands[int(same[q])]:
            best_c[q], best_d[q] = same[q], 0
    for q in np.flatnonzero((same == _NONE) & (best != _NONE)).tolist():
        c = int(best[q])
        if Levenshtein.distance(queries[q], cands[c], score_cutoff=1) <= 1:
            best_c[q], best_d[q] = c, 1
    return best_c, best_d


def _compare(queries: list[str], query: np.ndarray, start: np.ndarray, end: np.ndarray, postings: _Postings,
             best: np.ndarray, ncands: int, workers: int) -> None:
    """Lower ``best[q]`` (distance * ncands + candidate) to the nearest candidate in each posting slice
    ``start..end`` of row q. Rows sharing a slice are compared in one cdist call."""
    if query.size == 0:
        return
    order = np.lexsort((query, end, start))
    query, start, end = query[order], start[order], end[order]
    cuts = np.flatnonzero((start[1:] != start[:-1]) | (end[1:] != end[:-1])) + 1
    for b0, b1 in zip([0, *cuts.tolist()], [*cuts.tolist(), query.size], strict=True):
        s, e = int(start[b0]), int(end[b0])
        texts, ranks = postings.texts[s:e], postings.rank[s:e]
        block = query[b0:b1]
        rows = max(1, _CELLS // (e - s))
        for r0 in range(0, block.size, rows):
            chunk = block[r0:r0 + rows]
            dist = process.cdist([queries[i] for i in chunk.tolist()], texts, scorer=Levenshtein.distance,
                                 dtype=np.int32, workers=workers if chunk.size * (e - s) >= _BIG_BLOCK else 1)
            key = (dist.astype(np.int64) * ncands + ranks).min(axis=1)  # lowest distance, then lowest id
            best[chunk] = np.minimum(best[chunk], key)


def _scan_until_floor(queries: list[str], query: np.ndarray, lo: np.ndarray, hi: np.ndarray, target: np.ndarray,
                      cands: list[str], clen: np.ndarray, best: np.ndarray, workers: int) -> None:
    """Lower ``best[q]`` over the candidates of length ``lo[q]..hi[q]``, in id order, dropping a query as soon
    as its best is at distance ``target[q]`` (no nearer one exists) among the candidates scanned so far."""
    ncands = len(cands)
    for window_lo, window_hi in sorted(set(zip(lo.tolist(), hi.tolist(), strict=True))):
        group = (lo == window_lo) & (hi == window_hi)
        rows, goal = query[group], target[group]
        window = np.flatnonzero((clen >= window_lo) & (clen <= window_hi))
        start, step = 0, _FIRST_SCAN
        while rows.size and start < window.size:
            cols = window[start:start + step]
            dist = process.cdist([queries[i] for i in rows.tolist()], [cands[c] for c in cols.tolist()],
                                 scorer=Levenshtein.distance, dtype=np.int32,
                                 workers=workers if rows.size * cols.size >= _BIG_BLOCK else 1)
            best[rows] = np.minimum(best[rows], (dist.astype(np.int64) * ncands + cols).min(axis=1))
            # settled: at the target distance, by a candidate no later than the scanned ones (best may hold a
            # candidate found earlier further down the id order)
            left = (best[rows] // ncands > goal) | (best[rows] % ncands > cols[-1])
            rows, goal = rows[left], goal[left]
            start, step = start + step, step * 2


def _next_bound(d: int) -> int:
    return d + 1 if d < 6 else d * 3 // 2


def _filtered_search(queries: list[str], cands: list[str], workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest candidate (index into ``cands``, which are in id order) and its distance for every query: the
    gram-filtered search with a growing bound (see the module docstring)."""
    n, ncands = len(queries), len(cands)
    qlen = _lengths(queries)
    fallback = _fallback_by_length(_lengths(cands))
    chars, bigrams = (_Postings.build(cands, 1), _grams(queries, 1)), (_Postings.build(cands, 2), _grams(queries, 2))
    # ed(q, c) >= len c - (characters of q that c holds): no candidate longer than d + held is within d
    held = np.bincount(chars[1][0][np.isin(chars[1][1], chars[0].features)], minlength=n)
    best = np.full(n, _NONE, dtype=np.int64)  # distance * ncands + candidate: the lowest is the nearest
    floor = np.zeros(n, dtype=np.int64)  # no candidate is nearer (a query left open by bound d is beyond d)
    clen = _lengths(cands)
    todo = np.arange(n, dtype=np.int64)
    d = 2
    while todo.size:
        found = best[todo] != _NONE
        bound = np.where(found, np.minimum(d, best[todo] // ncands), d)  # a known distance is an exact bound
        lens = qlen[todo]
        lo, hi = lens - bound, np.minimum(lens + bound, bound + held[todo])
        local = np.full(n, -1, dtype=np.int64)
        local[todo] = np.arange(todo.size)
        pools = []
        for (postings, (owner, feature)), required in ((chars, lens - bound), (bigrams, lens - 1 - 2 * bound)):
            mine = local[owner] >= 0
            pools.append(_pool(postings, (local[owner[mine]], feature[mine]), lo, hi, required))
        char_pool, bigram_pool = pools
        no_filter = lens - bound <= 0  # then candidates sharing no character count too: the fallback stands in
        char_size = char_pool.size + no_filter
        bigram_size = np.where(lens - 1 - 2 * bound > 0, bigram_pool.size, _NONE)
        hopeless = char_pool.empty | bigram_pool.empty  # no candidate within the bound
        # Required to share at most one character, and only a candidate at the floor can settle it: scan the
        # length window in id order instead, stopping at the first such candidate.
        at_floor = ~hopeless & (lens - bound <= 1) & (bound == floor[todo])
        use_bigrams = ~hopeless & ~at_floor & (bigram_size < char_size)
        use_chars = ~hopeless & ~at_floor & ~use_bigrams
        _scan_until_floor(queries, todo[at_floor], lo[at_floor], hi[at_floor], bound[at_floor], cands, clen, best,
                          workers)
        for (postings, _), pool, use in ((chars, char_pool, use_chars), (bigrams, bigram_pool, use_bigrams)):
            rows = use[pool.query]
            _compare(queries, todo[pool.query[rows]], pool.start[rows], pool.end[rows], postings, best, ncands,
                     workers)
        for q in todo[(use_chars | at_floor) & no_filter].tolist():
            fb = int(fallback[min(int(qlen[q]), fallback.size - 1)])
            if fb >= 0:
                key = Levenshtein.distance(queries[q], cands[fb]) * ncands + fb
                best[q] = min(int(best[q]), key)
        done = (best[todo] != _NONE) & (best[todo] // ncands <= bound)
        floor[todo[~done]] = bound[~done] + 1
        todo = todo[~done]
        d = _next_bound(d)
    return best % ncands, (best // ncands).astype(np.int32)


def nearest_by_edit_distance(queries: list[str], cands: list[str], cand_ids: np.ndarray,
                             workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """For each query string, the index into ``cands`` with the smallest Levenshtein distance (ties: the lowest
    ``cand_ids``), and that distance; -1 and -1 when ``cands`` is empty. ``workers``: threads for the larger
    rapidfuzz ``cdist`` calls (-1: all cores)."""
    best_c = np.full(len(queries), -1, dtype=np.int64)
    best_d = np.full(len(queries), -1, dtype=np.int32)
    if not queries or not cands:
        return best_c, best_d
    slot: dict[str, int] = {}  # identical queries are searched once
    inverse = np.fromiter((slot.setdefault(q, len(slot)) for q in queries), dtype=np.int64, count=len(queries))
    unique = list(slot)
    order = np.argsort(np.asarray(cand_ids), kind="stable")  # work in id order: the lowest index is the lowest id
    sorted_cands = [cands[i] for i in order.tolist()]
    near, dist = _within_one(unique, sorted_cands)
    rest = np.flatnonzero(near < 0)
    if rest.size:
        near[rest], dist[rest] = _filtered_search([unique[i] for i in rest.tolist()], sorted_cands, workers)
    return order[near[inverse]], dist[inverse]
