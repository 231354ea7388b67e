"""The MinED search as lmfuse shipped it before alignment/nearest.py (commit 8c970e7), kept verbatim as the
baseline that benchmarks/alignment.py times the new search against: distance <= 1 by hash joins, a
rare-character index, then rapidfuzz ``cdist`` over length windows that double until every query is resolved."""

from __future__ import annotations

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

_CDIST_CELLS = 20_000_000  # query-chunk size for the windowed scan: ~80 MB of int32 per chunk


def _keys(texts: list[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(hash, owner) arrays of one family of keys per string: ``full`` (the string), ``del`` (each one-character
    deletion), ``pos`` (each deletion tagged with its position)."""
    hashes: list[int] = []
    owners: list[int] = []
    for k, t in enumerate(texts):
        if kind == "full":
            keys = [hash(t)]
        elif kind == "del":
            keys = [hash(t[:i] + t[i + 1:]) for i in range(len(t))]
        else:
            keys = [hash((i, t[:i] + t[i + 1:])) for i in range(len(t))]
        hashes.extend(keys)
        owners.extend([k] * len(keys))
    return np.asarray(hashes, dtype=np.int64), np.asarray(owners, dtype=np.int64)


def _min_rank_by_key(qkeys: tuple[np.ndarray, np.ndarray], ckeys: tuple[np.ndarray, np.ndarray], nq: int,
                     rank: np.ndarray) -> np.ndarray:
    """For each query, the smallest candidate ``rank`` over all keys it shares with a candidate (int64 max if
    none). Only the minimum per key is kept, so short keys shared by thousands of strings cost nothing extra."""
    out = np.full(nq, np.iinfo(np.int64).max, dtype=np.int64)
    (ch, co), (qh, qo) = ckeys, qkeys
    if ch.size == 0 or qh.size == 0:
        return out
    order = np.lexsort((rank[co], ch))
    ch, cr = ch[order], rank[co[order]]
    first = np.ones(ch.size, dtype=bool)
    first[1:] = ch[1:] != ch[:-1]
    uk, umin = ch[first], cr[first]
    pos = np.clip(np.searchsorted(uk, qh), 0, uk.size - 1)
    hit = uk[pos] == qh
    np.minimum.at(out, qo[hit], umin[pos[hit]])
    return out


def _within_one(queries: list[str], cands: list[str], cand_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest candidate at Levenshtein distance <= 1 (lowest id on ties), with hash joins instead of a scan.

    ed(q, c) <= 1 exactly when q and c agree after deleting the same position (a substitution), or one is the
    other with one character deleted (an insertion). Every key match is therefore a true match, and each key
    only needs its lowest-id candidate. The winner is verified once, which also rules out hash collisions."""
    rank = np.argsort(np.argsort(cand_ids, kind="stable"), kind="stable")  # candidate -> position in id order
    by_rank = np.argsort(cand_ids, kind="stable")
    nq = len(queries)
    same = _min_rank_by_key(_keys(queries, "full"), _keys(cands, "full"), nq, rank)  # distance 0 comes first
    best = np.minimum.reduce([
        _min_rank_by_key(_keys(queries, "pos"), _keys(cands, "pos"), nq, rank),
        _min_rank_by_key(_keys(queries, "del"), _keys(cands, "full"), nq, rank),
        _min_rank_by_key(_keys(queries, "full"), _keys(cands, "del"), nq, rank),
    ])
    best = np.where(same < len(cands), same, best)
    best_c = np.full(nq, -1, dtype=np.int64)
    best_d = np.full(nq, -1, dtype=np.int32)
    for q in np.flatnonzero(best < len(cands)).tolist():
        c = int(by_rank[best[q]])
        d = Levenshtein.distance(queries[q], cands[c], score_cutoff=1)
        if d <= 1:
            best_c[q], best_d[q] = c, d
    return best_c, best_d


def _rare_character_search(queries: list[str], cands: list[str], cand_ids: np.ndarray, todo: np.ndarray,
                           limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact nearest candidates for queries made of characters few candidates contain (CJK, other scripts).

    A candidate sharing no character with q has ed(q, c) = max(len q, len c) >= len q, and the lowest-id
    candidate no longer than q reaches len q. So only the candidates sharing a character (found through a
    character index) plus that one fallback need a distance. Queries whose characters appear in more than
    ``limit`` candidates are returned as unresolved."""
    postings: dict[str, list[int]] = {}
    for k, t in enumerate(cands):
        for ch in set(t):
            postings.setdefault(ch, []).append(k)
    lengths = np.fromiter((len(t) for t in cands), dtype=np.int64, count=len(cands))
    by_id = np.argsort(cand_ids, kind="stable")
    # fallback[L]: the candidate minimising (max(L, len c), id), i.e. the best one sharing no character with a
    # query of length L: the lowest id of length <= L, else the lowest id of the shortest longer length.
    max_len = int(lengths.max(initial=0))
    rank = np.empty(len(cands), dtype=np.int64)
    rank[by_id] = np.arange(len(cands))
    none = np.iinfo(np.int64).max
    at_len = np.full(max_len + 2, none, dtype=np.int64)
    np.minimum.at(at_len, lengths, rank)
    fallback = np.full(max_len + 2, -1, dtype=np.int64)
    upto = none
    for length in range(max_len + 2):
        upto = min(upto, int(at_len[length]))
        if upto != none:
            fallback[length] = by_id[upto]
        else:
            longer = at_len[length + 1:]
            hits = np.flatnonzero(longer != none)
            fallback[length] = by_id[longer[hits[0]]] if hits.size else -1
    best_c = np.full(todo.size, -1, dtype=np.int64)
    best_d = np.full(todo.size, -1, dtype=np.int32)
    resolved = np.zeros(todo.size, dtype=bool)
    for n, q in enumerate(todo.tolist()):
        text = queries[q]
        lists = [postings.get(ch, []) for ch in set(text)]
        if sum(len(x) for x in lists) > limit:
            continue
        shared = np.unique(np.fromiter((k for x in lists for k in x), dtype=np.int64))
        fb = fallback[min(len(text), max_len + 1)]
        pool = np.union1d(shared, [fb]) if fb >= 0 else shared
        if pool.size == 0:
            continue
        pool = pool[np.argsort(cand_ids[pool], kind="stable")]
        dist = process.cdist([text], [cands[k] for k in pool.tolist()], scorer=Levenshtein.distance,
                             dtype=np.int32, workers=1)[0]
        arg = int(dist.argmin())
        best_c[n], best_d[n], resolved[n] = pool[arg], dist[arg], True
    return best_c, best_d, resolved


def _nearest_by_scan(queries: list[str], cands: list[str], cand_ids: np.ndarray,
                     workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest candidate by rapidfuzz ``cdist`` over growing length windows.

    ed(a, b) >= |len(a) - len(b)|, so for queries of length L a minimum <= r found among candidates of length
    L-r..L+r is global (and ties are complete). Unresolved queries retry with r doubled, then with no window.
    Candidate columns are in target-id order so the first argmin is the lowest id."""
    best_c = np.full(len(queries), -1, dtype=np.int64)
    best_d = np.full(len(queries), -1, dtype=np.int32)
    qlen = np.fromiter((len(s) for s in queries), dtype=np.int64, count=len(queries))
    clen = np.fromiter((len(s) for s in cands), dtype=np.int64, count=len(cands))
    corder = np.argsort(cand_ids, kind="stable")
    max_len = int(max(qlen.max(initial=0), clen.max(initial=0)))
    for length in np.unique(qlen).tolist():
        todo = np.flatnonzero(qlen == length)
        r = 2
        while todo.size:
            full = r >= max_len
            window = corder if full else corder[np.abs(clen[corder] - length) <= r]
            if window.size == 0:
                r *= 2
                continue
            wtexts = [cands[i] for i in window.tolist()]
            rows = max(1, _CDIST_CELLS // window.size)
            unresolved = []
            for start in range(0, todo.size, rows):
                chunk = todo[start:start + rows]
                dist = process.cdist([queries[i] for i in chunk.tolist()], wtexts, scorer=Levenshtein.distance,
                                     score_cutoff=None if full else r, dtype=np.int32, workers=workers)
                arg = dist.argmin(axis=1)
                dmin = dist[np.arange(len(chunk)), arg]
                done = dmin <= r if not full else np.ones(len(chunk), dtype=bool)
                best_c[chunk[done]] = window[arg[done]]
                best_d[chunk[done]] = dmin[done]
                unresolved.append(chunk[~done])
            todo = np.concatenate(unresolved)
            r *= 2
    return best_c, best_d


def nearest_by_edit_distance(queries: list[str], cands: list[str], cand_ids: np.ndarray,
                             rare_limit: int = 2000, workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """For each query string, the index into ``cands`` with the smallest Levenshtein distance (ties: lowest
    ``cand_ids``), and that distance. Exact: the same answer as a brute-force scan, in three stages:
    distance <= 1 by hash joins; queries of rare characters through a character index; the rest by
    length-windowed ``cdist``."""
    order = np.argsort(cand_ids, kind="stable")  # work in id order: the first minimum is the lowest id
    ids = np.asarray(cand_ids)[order]
    sorted_cands = [cands[i] for i in order.tolist()]
    best_c, best_d = _within_one(queries, sorted_cands, ids)
    rest = np.flatnonzero(best_c < 0)
    if rest.size:
        rc, rd, ok = _rare_character_search(queries, sorted_cands, ids, rest, rare_limit)
        best_c[rest[ok]], best_d[rest[ok]] = rc[ok], rd[ok]
        rest = rest[~ok]
    if rest.size:
        rc, rd = _nearest_by_scan([queries[i] for i in rest.tolist()], sorted_cands, ids, workers)
        best_c[rest], best_d[rest] = rc, rd
    return np.where(best_c >= 0, order[np.maximum(best_c, 0)], -1), best_d
