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

from lmfuse import atomic
from lmfuse.alignment.nearest import nearest_by_edit_distance
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
