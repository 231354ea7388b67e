"""Surface bytes of tokens across the three tiny tokenizer families, and their byte / special / space rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lmfuse.alignment import BYTE, NORMAL, SPECIAL, UNUSED, token_table
from lmfuse.alignment.tokens import detect_family, gpt2_byte_decoder

TEXTS = [
    "Hello world",
    "def add(a, b):\n\treturn a + b\n",
    "café naïve — “quotes” 東京 你好 🙂🚀",
    "  two  spaces\n\nand blank lines",
]


def test_families_detected(tables: dict[str, Any]) -> None:
    assert {f: t.family for f, t in tables.items()} == {
        "bytebpe": "bytebpe", "sentencepiece": "sentencepiece", "wordpiece": "wordpiece"}


def test_tokenizers_really_differ(tokenizers3: dict[str, Any]) -> None:
    text = TEXTS[2]
    pieces = {f: tuple(t.convert_ids_to_tokens(t(text, add_special_tokens=False)["input_ids"]))
              for f, t in tokenizers3.items()}
    assert len(set(pieces.values())) == 3


def test_gpt2_alphabet_is_a_bijection() -> None:
    dec = gpt2_byte_decoder()
    assert sorted(dec.values()) == list(range(256))
    assert dec["Ġ"] == 0x20 and dec["Ċ"] == 0x0A and dec["ĉ"] == 0x09 and dec["A"] == 0x41


@pytest.mark.parametrize("family", ["bytebpe", "sentencepiece"])
@pytest.mark.parametrize("text", TEXTS)
def test_surfaces_concatenate_to_the_text(tokenizers3: dict[str, Any], tables: dict[str, Any], family: str,
                                          text: str) -> None:
    """Lossless families: the surfaces of a tokenization, joined, are exactly the text's UTF-8 bytes."""
    ids = tokenizers3[family](text, add_special_tokens=False)["input_ids"]
    assert b"".join(tables[family].surface[i] for i in ids) == text.encode("utf-8")


def test_wordpiece_surfaces_match_up_to_whitespace(tokenizers3: dict[str, Any], tables: dict[str, Any]) -> None:
    """WordPiece is lossy on whitespace: same non-space bytes, continuation pieces carry no space."""
    text = "Hello world, the stack"
    ids = tokenizers3["wordpiece"](text, add_special_tokens=False)["input_ids"]
    joined = b"".join(tables["wordpiece"].surface[i] for i in ids)
    assert joined.replace(b" ", b"") == text.encode().replace(b" ", b"")
    table = tables["wordpiece"]
    for i, raw in enumerate(table.raw):
        if raw.startswith("##") and table.kind[i] == NORMAL:
            assert not table.leading_space[i]
            assert table.surface[i] == raw[2:].encode()


def test_newline_byte_tokens(tables: dict[str, Any]) -> None:
    bpe, sp = tables["bytebpe"], tables["sentencepiece"]
    newline_bpe = bpe.raw.index("Ċ")
    newline_sp = sp.raw.index("<0x0A>")
    assert bpe.surface[newline_bpe] == b"\n" and sp.surface[newline_sp] == b"\n"
    assert sp.kind[newline_sp] == BYTE
    assert bpe.surface[bpe.raw.index("Ġ")] == b" "


def test_lone_bytes_are_byte_tokens(tables: dict[str, Any]) -> None:
    bpe, sp = tables["bytebpe"], tables["sentencepiece"]
    e6_sp = sp.raw.index("<0xE6>")
    assert sp.surface[e6_sp] == b"\xe6" and sp.kind[e6_sp] == BYTE
    e6_bpe = bpe.raw.index("æ")  # the GPT-2 alphabet's character for byte 0xE6
    assert bpe.surface[e6_bpe] == b"\xe6" and bpe.kind[e6_bpe] == BYTE
    assert bpe.text[e6_bpe] == "\ufffd"


def test_leading_space_markers(tables: dict[str, Any]) -> None:
    bpe, sp = tables["bytebpe"], tables["sentencepiece"]
    assert bpe.surface[bpe.raw.index("Ġthe")] == b" the"
    assert sp.surface[sp.raw.index("▁the")] == b" the"
    assert bpe.leading_space[bpe.raw.index("Ġthe")] and not bpe.leading_space[bpe.raw.index("the")]


def test_specials_have_roles_and_no_surface(tables: dict[str, Any]) -> None:
    for table in tables.values():
        assert set(table.roles) == {"bos", "eos", "pad", "unk"}
        for i in table.roles.values():
            assert table.kind[i] == SPECIAL and table.surface[i] == b""


def test_unused_and_holes(tables: dict[str, Any]) -> None:
    assert not np.any(tables["bytebpe"].kind == UNUSED)


def test_detect_family_from_json() -> None:
    assert detect_family({"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}}) == "bytebpe"
    assert detect_family({"model": {"type": "Unigram"}, "decoder": {"type": "Metaspace"}}) == "sentencepiece"
    assert detect_family({"model": {"type": "WordPiece"}}) == "wordpiece"
    assert detect_family({"model": {"type": "BPE"}}) == "char"


def test_content_hash_is_stable_and_distinguishes(tables: dict[str, Any], tokenizers3: dict[str, Any]) -> None:
    again = token_table(tokenizers3["bytebpe"])
    assert again.content_hash == tables["bytebpe"].content_hash
    assert len({t.content_hash for t in tables.values()}) == 3


def test_rejects_slow_tokenizers() -> None:
    with pytest.raises(TypeError, match="fast tokenizer"):
        token_table(object())


def test_surfaces_of_feeds_dtw(tokenizers3: dict[str, Any], tables: dict[str, Any]) -> None:
    from lmfuse.alignment import surfaces_of

    ids = tokenizers3["bytebpe"]("Hi the", add_special_tokens=False)["input_ids"]
    assert "".join(surfaces_of(tables["bytebpe"], ids)) == "Hi the"
    assert surfaces_of(tables["bytebpe"], [10_000, -1]) == ["", ""]


@pytest.mark.parametrize("family", ["bytebpe", "sentencepiece", "wordpiece"])
def test_table_from_rust_accessors_equals_the_json_one(tokenizers3: dict[str, Any], family: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from lmfuse.alignment import tokens

    tok = tokenizers3[family]
    assert tokens._light_spec(tok.backend_tokenizer) is not None  # BPE / WordPiece: the fast path is taken
    fast = token_table(tok)
    monkeypatch.setattr(tokens, "_light_spec", lambda backend: None)
    slow = token_table(tok)
    assert fast.content_hash == slow.content_hash and fast.text == slow.text and fast.family == slow.family
