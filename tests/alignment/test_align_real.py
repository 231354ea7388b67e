"""Alignment on real tokenizers: the default pack (zoo) and llama.cpp's vocab GGUFs with their expected-ids
oracles. Marked ``real``; skipped when the assets are not installed."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from conftest import real_home
from lmfuse.alignment import BYTE, NORMAL, align_offsets, build_vocab_map, token_table

pytestmark = pytest.mark.real

ZOO = ("smollm2", "qwen-coder", "gemma3")
SAMPLES = [
    "Hello world",
    "def f(x):\n\treturn x  # done\n",
    "café naïve — “quotes” 東京 你好 🙂🚀",
    "   leading spaces and trailing   ",
]


def _home() -> Path:
    home = real_home()
    if home is None:
        pytest.skip("no real lmfuse home (run `lmfuse zoo fetch`)")
    return home


_CACHE: dict[str, Any] = {}


def zoo_tokenizer(name: str) -> Any:
    path = _home() / "zoo" / name
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"zoo tokenizer {name} not installed")
    if name not in _CACHE:
        from transformers import AutoTokenizer

        _CACHE[name] = AutoTokenizer.from_pretrained(str(path))
    return _CACHE[name]


def zoo_table(name: str) -> Any:
    key = f"table:{name}"
    if key not in _CACHE:
        _CACHE[key] = token_table(zoo_tokenizer(name))
    return _CACHE[key]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("text", SAMPLES)
def test_zoo_surfaces_concatenate_to_the_text(name: str, text: str) -> None:
    tok, table = zoo_tokenizer(name), zoo_table(name)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(table.surface[i] for i in ids) == text.encode()


def test_zoo_families() -> None:
    assert [zoo_table(n).family for n in ZOO] == ["bytebpe", "bytebpe", "sentencepiece"]


@pytest.mark.parametrize("src", ZOO)
@pytest.mark.parametrize("tgt", ZOO)
def test_zoo_exact_maps_golden(src: str, tgt: str) -> None:
    a, b = zoo_table(src), zoo_table(tgt)
    vmap = build_vocab_map(a, b, "exact", cache=False)
    ta, tb = zoo_tokenizer(src), zoo_tokenizer(tgt)
    for text in ("\n", " the", "\n\n"):
        ia, ib = ta(text, add_special_tokens=False)["input_ids"], tb(text, add_special_tokens=False)["input_ids"]
        if len(ia) == 1 and len(ib) == 1:
            assert vmap.index[ia[0]] == ib[0], text
    for s in a.ids_of_kind(BYTE).tolist():  # byte tokens: same bytes or nothing
        t = vmap.index[s]
        assert t == -1 or b.surface[t] == a.surface[s]
    for role in ("bos", "eos"):
        if role in a.roles and role in b.roles:
            assert vmap.index[a.roles[role]] == b.roles[role]


@pytest.mark.parametrize(("src", "tgt"), [("smollm2", "gemma3"), ("gemma3", "qwen-coder")])
def test_zoo_offsets_alignment_covers_same_text(src: str, tgt: str) -> None:
    text = "\n".join(SAMPLES) * 3
    ea = zoo_tokenizer(src)(text, add_special_tokens=False, return_offsets_mapping=True)
    eb = zoo_tokenizer(tgt)(text, add_special_tokens=False, return_offsets_mapping=True)
    al = align_offsets(ea["offset_mapping"], eb["offset_mapping"])
    a, b = zoo_table(src), zoo_table(tgt)
    for (i0, i1), (j0, j1) in al.groups:
        sa = b"".join(a.surface[i] for i in ea["input_ids"][i0:i1])
        sb = b"".join(b.surface[i] for i in eb["input_ids"][j0:j1])
        assert sa.strip() == sb.strip()
    assert al.one_to_one_share() > 0.5


# sha256 (first 16 hex digits) of index (<i8) + distance (<i4) of the MinED maps the previous search
# (benchmarks/mined_v1.py) built on 2026-12-06, keyed by pair, for the token tables with these content hashes.
PREVIOUS_SEARCH_TABLES = {"smollm2": "e757e78e57aed9cfbd800492292bf5d2",
                          "qwen-coder": "e5fbb0c15f033eca5b31834800b777b6",
                          "gemma3": "8313e4adc2fc77ae71e52fe1ac2ba39d"}
PREVIOUS_SEARCH_MAPS = {
    ("smollm2", "qwen-coder"): "7a8ad8c8c20eaa9f",
    ("smollm2", "gemma3"): "6c7002a08df08592",
    ("qwen-coder", "smollm2"): "8a6150e8abd5e689",
    ("qwen-coder", "gemma3"): "1deb6a8314a3d4c3",
    ("gemma3", "smollm2"): "9b5dc68f9d19de7e",
    ("gemma3", "qwen-coder"): "2d6ef26b0ec9ea62",
}


@pytest.mark.parametrize(("src", "tgt"), list(PREVIOUS_SEARCH_MAPS))
def test_zoo_mined_maps_equal_brute_force_and_the_previous_search(src: str, tgt: str) -> None:
    """A cold MinED map of each ordered pair: 150 random searched tokens against a scan of every target NORMAL
    token (lowest distance, then lowest id), and the whole map against the previous search's (by digest, when
    the installed tokenizers are the ones it was recorded on)."""
    a, b = zoo_table(src), zoo_table(tgt)
    vmap = build_vocab_map(a, b, "mined", cache=False)
    targets = b.ids_of_kind(NORMAL)  # in id order: the first minimum is the lowest id
    target_texts = [b.text[t] for t in targets.tolist()]
    searched = [s for s in a.ids_of_kind(NORMAL).tolist() if not vmap.exact[s]]
    sample = random.Random(0).sample(searched, min(150, len(searched)))
    dist = process.cdist([a.text[s] for s in sample], target_texts, scorer=Levenshtein.distance, dtype=np.int32)
    assert vmap.distance[sample].tolist() == dist.min(axis=1).tolist()
    assert vmap.index[sample].tolist() == targets[dist.argmin(axis=1)].tolist()
    if a.content_hash == PREVIOUS_SEARCH_TABLES[src] and b.content_hash == PREVIOUS_SEARCH_TABLES[tgt]:
        digest = hashlib.sha256(vmap.index.astype("<i8").tobytes() + vmap.distance.astype("<i4").tobytes())
        assert digest.hexdigest()[:16] == PREVIOUS_SEARCH_MAPS[(src, tgt)]


ORACLE_VOCABS = ["gpt-2", "phi-3"]  # one byte-level BPE, one SentencePiece (loading a GGUF vocab is slow)


@pytest.mark.parametrize("vocab", ORACLE_VOCABS)
def test_llama_cpp_oracle_ids_decode_to_the_inputs(vocab: str) -> None:
    """llama.cpp's expected ids for its test strings, turned back into bytes by our surface table, give the
    input strings (SentencePiece vocabularies add one leading space, which we strip)."""
    directory = _home() / "vocabs"
    gguf = directory / f"ggml-vocab-{vocab}.gguf"
    inp, out = Path(f"{gguf}.inp"), Path(f"{gguf}.out")
    if not (gguf.is_file() and inp.is_file() and out.is_file()):
        pytest.skip(f"{gguf.name} and its oracle files are not installed")
    from transformers import AutoTokenizer

    table = token_table(AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf.name))
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = out.read_text(encoding="utf-8").split("\n")
    checked = 0
    for text, line in zip(texts, expected, strict=False):
        ids = [int(x) for x in line.split()]
        if not ids or any(i >= table.size for i in ids):
            continue
        got = b"".join(table.surface[i] for i in ids)
        prefix = b" " if table.family == "sentencepiece" else b""  # Llama-style SPM adds a dummy prefix space
        assert got in (text.encode(), prefix + text.encode()), (text, ids)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen-coder"])
def test_zoo_table_from_rust_accessors_equals_the_json_one(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmfuse.alignment import tokens

    fast = zoo_table(name)
    monkeypatch.setattr(tokens, "_light_spec", lambda backend: None)  # the full tokenizer.json path
    slow = token_table(zoo_tokenizer(name))
    assert fast.content_hash == slow.content_hash and fast.family == slow.family
