"""The ``prefix`` vocabulary map: each source token goes to the target token whose surface is its *longest prefix*.

A source token ``b`` (surface bytes ``s_b``) is sent to the target token whose surface is the longest prefix of
``s_b`` (the token itself when the target has it). Choosing that target token continues the text exactly as ``b``
would, only in shorter pieces, so a fused choice never writes text the source model did not mean; this is the
map test-time fusion (``lmfuse.ensemble``) projects members with. Projected with ``project_logprobs``, the mass
of every source token starting with a target token's text lands on it.

Rules (the shared ones of ``vocab.py`` first): specials by role or name; NORMAL and BYTE tokens by longest
surface prefix among the target's NORMAL and BYTE tokens (a NORMAL target wins a surface shared with a BYTE one,
then the lowest id); NORMAL tokens with no prefix at all (only possible when the target lacks a first byte, e.g.
WordPiece) fall back to MinED's nearest NORMAL token by edit distance; BYTE tokens with no prefix and UNUSED
tokens map to nothing. ``distance`` is the number of characters dropped from the end (0 when exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmfuse.alignment.nearest import nearest_by_edit_distance
from lmfuse.alignment.tokens import BYTE, NORMAL, TokenTable
from lmfuse.alignment.vocab import METHODS, exact_map


@dataclass
class SurfaceIndex:
    """A vocabulary's NORMAL and BYTE tokens by surface bytes: exact and longest-prefix lookups."""

    home: dict[bytes, int]  # surface -> id (NORMAL before BYTE, then the lowest id)
    longest: int

    def longest_prefix(self, s: bytes) -> tuple[int, int]:
        """``(id, length)`` of the token whose surface is the longest prefix of ``s``; ``(-1, 0)`` if none."""
        for n in range(min(len(s), self.longest), 0, -1):
            j = self.home.get(s[:n])
            if j is not None:
                return j, n
        return -1, 0


def surface_index(table: TokenTable, width: int | None = None) -> SurfaceIndex:
    """Index the NORMAL and BYTE tokens of ``table`` with an id below ``width`` (default: all)."""
    width = table.size if width is None else width
    home: dict[bytes, int] = {}
    for kind in (NORMAL, BYTE):
        for t in np.flatnonzero(table.kind == kind).tolist():
            if t < width and table.surface[t]:
                home.setdefault(table.surface[t], t)
    return SurfaceIndex(home, max((len(s) for s in home), default=0))


@METHODS.register("prefix")
def prefix_map(src: TokenTable, tgt: TokenTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Specials by role, then the longest target surface prefix; MinED for NORMAL tokens with no prefix."""
    index, exact, distance = exact_map(src, tgt)
    seed = surface_index(tgt)
    orphans = []
    for kind in (NORMAL, BYTE):
        for i in src.ids_of_kind(kind).tolist():
            j, n = seed.longest_prefix(src.surface[i])
            if j >= 0:
                full = n == len(src.surface[i])
                index[i], exact[i] = j, full
                distance[i] = 0 if full else max(1, len(src.text[i]) - len(tgt.text[j]))
            elif kind == NORMAL:
                orphans.append(i)
    normal = np.array(sorted({t for t in seed.home.values() if tgt.kind[t] == NORMAL}), dtype=np.int64)
    if orphans and normal.size:
        best, dist = nearest_by_edit_distance([src.text[i] for i in orphans], [tgt.text[t] for t in normal.tolist()],
                                              normal)
        sel = np.asarray(orphans, dtype=np.int64)
        index[sel], distance[sel] = normal[best], dist
    return index, exact, distance
