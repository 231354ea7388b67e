"""The ``prefix`` vocabulary map (test-time fusion's projection): longest surface prefix, specials, fallback, cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lmfuse.alignment import BYTE, NORMAL, SPECIAL, build_vocab_map, surface_index
from lmfuse.paths import lmfuse_home

PAIRS = [("bytebpe", "sentencepiece"), ("sentencepiece", "bytebpe"), ("bytebpe", "wordpiece"),
         ("wordpiece", "sentencepiece")]


@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_prefix_map_targets_the_longest_surface_prefix(tables: dict[str, Any], src: str, tgt: str) -> None:
    a, b = tables[src], tables[tgt]
    vmap = build_vocab_map(a, b, method="prefix", cache=False)
    targets = [(t, b.surface[t]) for t in range(b.size) if b.kind[t] in (NORMAL, BYTE)]
    checked = 0
    for i in range(a.size):
        if a.kind[i] not in (NORMAL, BYTE):
            continue
        s = a.surface[i]
        prefixes = [(len(sb), t) for t, sb in targets if s.startswith(sb)]
        if not prefixes:
            continue  # no prefix at all: MinED fallback (next test) or nothing for bytes
        j = int(vmap.index[i])
        assert j >= 0 and s.startswith(b.surface[j]), (a.raw[i], j)
        assert len(b.surface[j]) == max(n for n, _ in prefixes), (a.raw[i], b.raw[j])
        assert bool(vmap.exact[i]) == (b.surface[j] == s)
        checked += 1
    assert checked > 100


def test_prefix_map_specials_by_role_and_orphans_by_mined(tables: dict[str, Any]) -> None:
    a, b = tables["bytebpe"], tables["wordpiece"]
    vmap = build_vocab_map(a, b, method="prefix", cache=False)
    mined = build_vocab_map(a, b, method="mined", cache=False)
    assert vmap.index[a.roles["eos"]] == b.roles["eos"]
    index = surface_index(b)
    orphans = [i for i in a.ids_of_kind(NORMAL).tolist() if index.longest_prefix(a.surface[i])[0] < 0]
    assert orphans  # WordPiece has no newline token: "Ċ..." tokens have no prefix there
    assert np.array_equal(vmap.index[orphans], mined.index[orphans])
    special = a.ids_of_kind(SPECIAL)
    assert np.array_equal(vmap.index[special], mined.index[special])


def test_prefix_map_cached_on_disk_with_the_content_hash_key(tokenizers3: dict[str, Any]) -> None:
    src, tgt = tokenizers3["sentencepiece"], tokenizers3["bytebpe"]
    first = build_vocab_map(src, tgt, method="prefix", src_width=448, tgt_width=448)
    files = list((lmfuse_home() / "vocab-maps").glob("*-prefix-448-448.npz"))
    assert len(files) == 1
    again = build_vocab_map(src, tgt, method="prefix", src_width=448, tgt_width=448)
    assert np.array_equal(first.index, again.index) and np.array_equal(first.exact, again.exact)
    assert again.method == "prefix"


def test_surface_index_longest_prefix_and_width(tables: dict[str, Any]) -> None:
    t = tables["bytebpe"]
    index = surface_index(t)
    for text in (b" the end", b"zzz", b"\n\n  x"):
        j, n = index.longest_prefix(text)
        assert j >= 0 and t.surface[j] == text[:n]
        assert not any(t.surface[i] == text[:m] for i in range(t.size) for m in range(n + 1, len(text) + 1))
    narrow = surface_index(t, 10)
    assert all(i < 10 for i in narrow.home.values())
