"""Vocabulary maps: golden cases across families, identity, specials by role, byte tokens, MinED exactness, cache."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from lmfuse.alignment import BYTE, NORMAL, build_vocab_map, identity_map, nearest
from lmfuse.alignment.nearest import _filtered_search, nearest_by_edit_distance
from lmfuse.alignment.vocab import METHODS, VocabMap
from lmfuse.paths import lmfuse_home
from lmfuse.registry import UnknownNameError

PAIRS = [(a, b) for a in ("bytebpe", "sentencepiece", "wordpiece") for b in ("bytebpe", "sentencepiece", "wordpiece")]


def tid(table: Any, raw: str) -> int:
    return table.raw.index(raw)


@pytest.mark.parametrize("family", ["bytebpe", "sentencepiece", "wordpiece"])
@pytest.mark.parametrize("method", ["exact", "mined"])
def test_identity_when_same_tokenizer(tokenizers3: dict[str, Any], family: str, method: str) -> None:
    tok = tokenizers3[family]
    vmap = build_vocab_map(tok, tok, method=method, cache=False)
    assert np.array_equal(vmap.index, np.arange(len(tok)))
    assert vmap.exact.all() and (vmap.distance == 0).all()


def test_newline_maps_across_families(tables: dict[str, Any]) -> None:
    bpe, sp, wp = tables["bytebpe"], tables["sentencepiece"], tables["wordpiece"]
    assert build_vocab_map(bpe, sp, cache=False).index[tid(bpe, "Ċ")] == tid(sp, "<0x0A>")
    assert build_vocab_map(sp, bpe, cache=False).index[tid(sp, "<0x0A>")] == tid(bpe, "Ċ")
    # WordPiece has no newline token: unmapped, not an arbitrary short token.
    assert build_vocab_map(sp, wp, cache=False).index[tid(sp, "<0x0A>")] == -1


def test_byte_tokens_map_only_to_the_same_bytes(tables: dict[str, Any]) -> None:
    bpe, sp, wp = tables["bytebpe"], tables["sentencepiece"], tables["wordpiece"]
    for src, tgt in ((bpe, sp), (sp, bpe), (bpe, wp), (sp, wp)):
        vmap = build_vocab_map(src, tgt, cache=False)
        for s in src.ids_of_kind(BYTE).tolist():
            t = vmap.index[s]
            assert t == -1 or tgt.surface[t] == src.surface[s], (src.raw[s], tgt.raw[t])
    vmap = build_vocab_map(bpe, sp, cache=False)
    assert vmap.index[tid(bpe, "æ")] == tid(sp, "<0xE6>")  # lone 0xE6 byte
    assert vmap.index[tid(bpe, "ð")] == tid(sp, "<0xF0>")  # emoji lead byte
    # Every one of byte-level BPE's lone-byte tokens finds its SentencePiece byte twin.
    assert (vmap.index[bpe.ids_of_kind(BYTE)] >= 0).all()


def test_prefers_normal_token_over_byte_fallback(tables: dict[str, Any]) -> None:
    bpe, sp = tables["bytebpe"], tables["sentencepiece"]
    vmap = build_vocab_map(bpe, sp, cache=False)
    # SentencePiece has both "<0x41>" and "A" with surface b"A"; the piece the tokenizer actually emits wins.
    assert vmap.index[tid(bpe, "A")] == tid(sp, "A")


def test_leading_space_markers_match_exactly(tables: dict[str, Any]) -> None:
    bpe, sp, wp = tables["bytebpe"], tables["sentencepiece"], tables["wordpiece"]
    vmap = build_vocab_map(bpe, sp, cache=False)
    assert vmap.index[tid(bpe, "Ġthe")] == tid(sp, "▁the") and vmap.exact[tid(bpe, "Ġthe")]
    vmap = build_vocab_map(sp, wp, cache=False)
    assert vmap.index[tid(sp, "▁the")] == tid(wp, "the")  # a WordPiece word start has a leading space


def test_multibyte_characters(tables: dict[str, Any], tokenizers3: dict[str, Any]) -> None:
    """CJK / emoji: a whole-character token maps exactly wherever the other side has that character."""
    wp, bpe = tables["wordpiece"], tables["bytebpe"]
    vmap = build_vocab_map(wp, bpe, cache=False)
    for raw in ("##京", "🙂"):
        if raw in wp.raw:
            t = vmap.index[tid(wp, raw)]
            assert t >= 0 and vmap.distance[tid(wp, raw)] >= 0
            if vmap.exact[tid(wp, raw)]:
                assert bpe.surface[t] == wp.surface[tid(wp, raw)]


@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_bos_eos_pad_unk_map_by_role(tables: dict[str, Any], src: str, tgt: str) -> None:
    vmap = build_vocab_map(tables[src], tables[tgt], cache=False)
    for role in ("bos", "eos", "pad", "unk"):
        assert vmap.index[tables[src].roles[role]] == tables[tgt].roles[role], role


@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_mined_maps_every_normal_token_and_exact_is_a_subset(tables: dict[str, Any], src: str, tgt: str) -> None:
    a, b = tables[src], tables[tgt]
    mined = build_vocab_map(a, b, "mined", cache=False)
    exact = build_vocab_map(a, b, "exact", cache=False)
    normal = a.ids_of_kind(NORMAL)
    assert (mined.index[normal] >= 0).all()
    assert np.array_equal(exact.index[exact.index >= 0], mined.index[exact.index >= 0])
    for s in np.flatnonzero(mined.index >= 0).tolist():
        t = mined.index[s]
        if a.kind[s] == NORMAL and not mined.exact[s]:
            assert mined.distance[s] == Levenshtein.distance(a.text[s], b.text[t]) > 0


def test_mined_matches_brute_force_with_lowest_id_ties(tables: dict[str, Any]) -> None:
    """The fast search returns exactly the reference brute force: min distance, ties to the lowest target id."""
    a, b = tables["wordpiece"], tables["sentencepiece"]
    vmap = build_vocab_map(a, b, "mined", cache=False)
    cands = b.ids_of_kind(NORMAL).tolist()
    for s in a.ids_of_kind(NORMAL).tolist():
        dists = [Levenshtein.distance(a.text[s], b.text[t]) for t in cands]
        best = min(dists)
        first = min(t for t, d in zip(cands, dists, strict=True) if d == best)
        assert vmap.distance[s] == best
        assert vmap.index[s] == first, (a.raw[s], b.raw[vmap.index[s]], b.raw[first])


def _brute_force(queries: list[str], cands: list[str], ids: np.ndarray) -> list[tuple[int, int]]:
    """(distance, lowest id at that distance) of each query, by scanning every candidate."""
    out = []
    for q in queries:
        dists = [Levenshtein.distance(q, c) for c in cands]
        best = min(dists)
        out.append((best, min(int(ids[k]) for k, d in enumerate(dists) if d == best)))
    return out


QUERIES = st.lists(st.text(alphabet="abcde 東京", min_size=1, max_size=14), min_size=1, max_size=20)
CANDS = st.lists(st.text(alphabet="abcdef東", min_size=1, max_size=14), min_size=1, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(QUERIES, CANDS, st.randoms(use_true_random=False))
def test_nearest_by_edit_distance_equals_brute_force(queries: list[str], cands: list[str], rng: random.Random) -> None:
    """Both stages (hash joins, gram-filtered search) against a brute-force scan; ids shuffled so that ties
    must go to the lowest *id*, not the first position."""
    ids = np.array(rng.sample(range(10 * len(cands)), len(cands)), dtype=np.int64)
    best, dist = nearest_by_edit_distance(queries, cands, ids)
    got = [(d, int(ids[c])) for c, d in zip(best.tolist(), dist.tolist(), strict=True)]
    assert got == _brute_force(queries, cands, ids)


@settings(max_examples=60, deadline=None)
@given(QUERIES, CANDS)
def test_filtered_search_alone_equals_brute_force(queries: list[str], cands: list[str]) -> None:
    """The gram-filtered stage on its own (every distance, 0 and 1 included, goes through the filters, the
    deepening bound and the fallback); candidates are in id order, so ids are positions."""
    best, dist = _filtered_search(queries, cands, workers=1)
    got = list(zip(dist.tolist(), best.tolist(), strict=True))
    assert got == _brute_force(queries, cands, np.arange(len(cands)))


@settings(max_examples=80, deadline=None)
@given(QUERIES, CANDS)
def test_id_order_scan_stops_only_when_settled(queries: list[str], cands: list[str]) -> None:
    """With one candidate per scan step, the early stop of the id-order scan is exercised on small inputs."""
    with mock.patch.object(nearest, "_FIRST_SCAN", 1):
        best, dist = _filtered_search(queries, cands, workers=1)
    got = list(zip(dist.tolist(), best.tolist(), strict=True))
    assert got == _brute_force(queries, cands, np.arange(len(cands)))


def test_nearest_when_no_character_is_shared() -> None:
    """A query sharing no character is at distance max(len q, len c) from everything: the lowest id of length
    <= len q wins, else the lowest id of the shortest longer length."""
    cands, ids = ["abc", "xy", "q", "zz"], np.array([5, 3, 9, 1])
    best, dist = nearest_by_edit_distance(["ΩΩ", "ΩΩΩΩΩ"], cands, ids)
    assert ids[best].tolist() == [1, 1] and dist.tolist() == [2, 5]
    best, dist = nearest_by_edit_distance(["Ω"], ["abcd", "xyz", "uvw"], np.array([0, 7, 2]))
    assert best.tolist() == [2] and dist.tolist() == [3]


def test_nearest_with_nothing_to_search() -> None:
    best, dist = nearest_by_edit_distance(["abc"], [], np.array([], dtype=np.int64))
    assert best.tolist() == [-1] and dist.tolist() == [-1]
    best, dist = nearest_by_edit_distance([], ["abc"], np.array([0]))
    assert best.size == 0 and dist.size == 0


def test_widths_pad_and_truncate(tables: dict[str, Any]) -> None:
    a, b = tables["bytebpe"], tables["sentencepiece"]
    vmap = build_vocab_map(a, b, src_width=a.size + 64, tgt_width=b.size + 7, cache=False)
    assert vmap.index.shape == (a.size + 64,) and (vmap.index[a.size:] == -1).all()
    assert vmap.tgt_width == b.size + 7
    narrow = build_vocab_map(a, b, tgt_width=300, cache=False)
    assert narrow.index.max() < 300


def test_cache_roundtrip(tokenizers3: dict[str, Any]) -> None:
    a, b = tokenizers3["bytebpe"], tokenizers3["wordpiece"]
    first = build_vocab_map(a, b, src_width=512)
    files = list((lmfuse_home() / "vocab-maps").glob("*.npz"))
    assert len(files) == 1 and "mined-512-400" in files[0].name
    second = build_vocab_map(a, b, src_width=512)
    assert np.array_equal(first.index, second.index) and np.array_equal(first.exact, second.exact)
    files[0].write_bytes(b"half-written")  # a corrupt cache entry is rebuilt, not read
    third = build_vocab_map(a, b, src_width=512)
    assert np.array_equal(first.index, third.index)
    assert not list((lmfuse_home() / "vocab-maps").glob("*.tmp"))


def test_unknown_method_suggests() -> None:
    with pytest.raises(UnknownNameError, match="mined"):
        METHODS.get("minde")


def test_vocabmap_validates_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        VocabMap(np.zeros(3, np.int64), np.zeros(2, bool), np.zeros(3, np.int32), 3, 5, "x")
    with pytest.raises(ValueError, match="tgt_width"):
        VocabMap(np.array([9]), np.zeros(1, bool), np.zeros(1, np.int32), 1, 5, "x")
    assert identity_map(4).coverage() == {"exact": 1.0, "edit": 0.0, "unmapped": 0.0}


def test_random_strings_round_trip_mined() -> None:
    rng = random.Random(0)
    words = ["".join(rng.choices("abcxyz", k=rng.randint(1, 8))) for _ in range(300)]
    best, dist = nearest_by_edit_distance(words, words, np.arange(len(words)))
    assert (dist == 0).all()
    assert all(words[b] == w for b, w in zip(best.tolist(), words, strict=True))
