"""Vocabulary maps: for every source id, one target id (or -1), as int64 index arrays — never a dense V×V matrix.

Rules shared by every method (they fix the reference FuseLLM/PackLLM quirks, see docs/alignment.md):

* **Special tokens map by role** (BOS->BOS, EOS->EOS, UNK->UNK, PAD->PAD; an id with several roles takes the first
  of bos, eos, unk, pad), else to a target special token with the same name (``<|im_start|>``), else to nothing.
  Never by edit distance.
* **Exact match is on surface bytes** (``Ġthe`` == ``▁the`` == `` the``); when several target ids share the
  surface, a NORMAL token wins over a BYTE token, then the lowest id.
* **Byte tokens** (``<0xE6>``, a lone byte-level ``æ``) map only to a target token with the same bytes, else to -1.
* ``mined`` adds FuseLLM's minimum edit distance for the rest: the target NORMAL token whose surface text has the
  smallest Levenshtein distance; **ties go to the lowest target id** (the reference's "first minimum in
  vocabulary order", applied to surface text instead of raw piece strings).

Widths: ``src_width``/``tgt_width`` default to the tokenizer lengths; ids at or beyond a tokenizer's length (logit
padding, e.g. Qwen2.5's 151,936 logits for 151,665 tokens) are unmapped on the source side and never targeted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from lmfuse import atomic
from lmfuse.alignment.tokens import BYTE, NORMAL, SPECIAL, TokenTable, token_table
from lmfuse.registry import Registry

CACHE_VERSION = 1
_ROLE_PRIORITY = ("bos", "eos", "unk", "pad")


@dataclass(frozen=True)
class VocabMap:
    """``index[s]``: target id for source id ``s`` (-1 = unmapped); ``exact[s]``: surface bytes (or role) equal;
    ``distance[s]``: edit distance of the chosen target (0 when exact, -1 when unmapped). All arrays [src_width]."""

    index: np.ndarray
    exact: np.ndarray
    distance: np.ndarray
    src_width: int
    tgt_width: int
    method: str

    def __post_init__(self) -> None:
        for name in ("index", "exact", "distance"):
            arr = getattr(self, name)
            if arr.shape != (self.src_width,):
                raise ValueError(f"VocabMap.{name} has shape {arr.shape}, expected ({self.src_width},)")
        if self.index.size and int(self.index.max()) >= self.tgt_width:
            raise ValueError(f"VocabMap.index holds target id {int(self.index.max())} >= tgt_width {self.tgt_width}")

    @property
    def mapped(self) -> np.ndarray:
        """bool [src_width]: source ids that have a target."""
        return self.index >= 0

    def coverage(self, ids: np.ndarray | None = None) -> dict[str, float]:
        """Shares of ``ids`` (default: all source ids) mapped exactly, by edit distance, and not at all."""
        sel = np.arange(self.src_width) if ids is None else np.asarray(ids)
        n = max(len(sel), 1)
        mapped = self.index[sel] >= 0
        exact = self.exact[sel] & mapped
        return {"exact": float(exact.sum()) / n, "edit": float((mapped & ~exact).sum()) / n,
                "unmapped": float((~mapped).sum()) / n}


_CDIST_CELLS = 20_000_000  # query-chunk size for the windowed scan: ~80 MB of int32 per chunk

# A method fills (index, exact, distance) for the source ids 0..len(src)-1; target ids are < len(tgt).
MapMethod = Callable[[TokenTable, TokenTable], tuple[np.ndarray, np.ndarray, np.ndarray]]
METHODS: Registry[MapMethod] = Registry("vocabulary-map method")


def _preferred_by_surface(tgt: TokenTable, kinds: tuple[int, ...]) -> dict[bytes, int]:
    """surface -> target id, for target tokens of ``kinds``: NORMAL before BYTE, then the lowest id."""
    best: dict[bytes, int] = {}
    for kind in (NORMAL, BYTE):
        if kind not in kinds:
            continue
        for i in tgt.ids_of_kind(kind).tolist():
            best.setdefault(tgt.surface[i], i)
    return best


def _map_specials(src: TokenTable, tgt: TokenTable, index: np.ndarray, exact: np.ndarray,
                  distance: np.ndarray) -> None:
    role_of: dict[int, str] = {}
    for role in _ROLE_PRIORITY:
        if role in src.roles:
            role_of.setdefault(src.roles[role], role)
    by_name = {tgt.raw[i]: i for i in tgt.ids_of_kind(SPECIAL).tolist()[::-1]}  # lowest id wins
    for s in src.ids_of_kind(SPECIAL).tolist():
        own = role_of.get(s)
        t = tgt.roles.get(own, -1) if own is not None else -1
        if t < 0:
            t = by_name.get(src.raw[s], -1)
        if t >= 0:
            index[s], exact[s], distance[s] = t, True, 0


@METHODS.register("exact")
def exact_map(src: TokenTable, tgt: TokenTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Specials by role, then exact surface bytes (NORMAL and BYTE tokens); everything else -1."""
    index = np.full(src.size, -1, dtype=np.int64)
    exact = np.zeros(src.size, dtype=bool)
    distance = np.full(src.size, -1, dtype=np.int32)
    _map_specials(src, tgt, index, exact, distance)
    table = _preferred_by_surface(tgt, (NORMAL, BYTE))
    for kind in (NORMAL, BYTE):
        for s in src.ids_of_kind(kind).tolist():
            t = table.get(src.surface[s], -1)
            if t >= 0:
                index[s], exact[s], distance[s] = t, True, 0
    return index, exact, distance


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


@METHODS.register("mined")
def mined_map(src: TokenTable, tgt: TokenTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``exact``, then the nearest target NORMAL token by Levenshtein distance on surface text for the rest of
    the source NORMAL tokens (BYTE, SPECIAL and UNUSED tokens never go through edit distance)."""
    index, exact, distance = exact_map(src, tgt)
    targets = _preferred_by_surface(tgt, (NORMAL,))
    todo = [s for s in src.ids_of_kind(NORMAL).tolist() if index[s] < 0]
    if todo and targets:
        cand_ids = np.fromiter(targets.values(), dtype=np.int64, count=len(targets))
        cands = [tgt.text[i] for i in cand_ids.tolist()]
        best, dist = nearest_by_edit_distance([src.text[s] for s in todo], cands, cand_ids)
        sel = np.asarray(todo, dtype=np.int64)
        index[sel] = cand_ids[best]
        distance[sel] = dist
    return index, exact, distance


def _as_table(tokenizer: Any) -> TokenTable:
    return tokenizer if isinstance(tokenizer, TokenTable) else token_table(tokenizer)


def _pad(arr: np.ndarray, width: int, fill: Any) -> np.ndarray:
    if width <= arr.size:
        return arr[:width].copy()
    return np.concatenate([arr, np.full(width - arr.size, fill, dtype=arr.dtype)])


def _cache_file(src: TokenTable, tgt: TokenTable, method: str, src_width: int, tgt_width: int) -> Any:
    from lmfuse.paths import lmfuse_home  # a path helper only; no transformers import

    key = f"v{CACHE_VERSION}-{src.content_hash}-{tgt.content_hash}-{method}-{src_width}-{tgt_width}"
    return lmfuse_home() / "vocab-maps" / f"{key}.npz"


def _load(path: Any, method: str, src_width: int, tgt_width: int) -> VocabMap | None:
    try:
        with np.load(path) as z:
            return VocabMap(index=z["index"], exact=z["exact"], distance=z["distance"], src_width=src_width,
                            tgt_width=tgt_width, method=method)
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: rebuild (the write below replaces it atomically)


def _save(path: Any, vmap: VocabMap) -> None:
    with atomic.replacing(path) as f:
        np.savez(f, index=vmap.index, exact=vmap.exact, distance=vmap.distance)


def build_vocab_map(src_tokenizer: Any, tgt_tokenizer: Any, method: str = "mined", src_width: int | None = None,
                    tgt_width: int | None = None, cache: bool = True) -> VocabMap:
    """Map every source id (0..src_width-1) to one target id (or -1) with ``method`` (see ``METHODS``).

    Tokenizers may be HF fast tokenizers or :class:`TokenTable` objects. Widths default to the tokenizer
    lengths; pass the models' logits widths when they are wider. With ``cache``, the map is stored under
    ``lmfuse_home()/vocab-maps`` keyed by both tables' content hashes, the method and the widths.
    """
    fn = METHODS.get(method)
    src, tgt = _as_table(src_tokenizer), _as_table(tgt_tokenizer)
    src_width = src.size if src_width is None else int(src_width)
    tgt_width = tgt.size if tgt_width is None else int(tgt_width)
    if src_width <= 0 or tgt_width <= 0:
        raise ValueError(f"vocabulary widths must be positive, got src_width={src_width}, tgt_width={tgt_width}")
    path = _cache_file(src, tgt, method, src_width, tgt_width) if cache else None
    if path is not None and path.is_file():
        hit = _load(path, method, src_width, tgt_width)
        if hit is not None:
            return hit
    if src.content_hash == tgt.content_hash:  # one tokenizer: identity (even ids with a duplicate surface)
        index, exact, distance = identity_map(src.size).index, np.ones(src.size, bool), np.zeros(src.size, np.int32)
    else:
        index, exact, distance = fn(src, tgt)
    index = np.where(index < tgt_width, index, -1)  # a target id beyond the target's logits cannot be scored
    exact = exact & (index >= 0)
    distance = np.where(index >= 0, distance, -1).astype(np.int32)
    vmap = VocabMap(index=_pad(index, src_width, -1), exact=_pad(exact, src_width, False),
                    distance=_pad(distance, src_width, -1), src_width=src_width, tgt_width=tgt_width, method=method)
    if path is not None:
        _save(path, vmap)
    return vmap


def identity_map(width: int) -> VocabMap:
    """The map of a vocabulary onto itself (members that share a tokenizer)."""
    return VocabMap(index=np.arange(width, dtype=np.int64), exact=np.ones(width, dtype=bool),
                    distance=np.zeros(width, dtype=np.int32), src_width=width, tgt_width=width, method="identity")
