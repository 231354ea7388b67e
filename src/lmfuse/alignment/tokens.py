"""The exact surface bytes of every token of a tokenizer, whatever its family.

Every vocabulary stores its pieces in its own alphabet: byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM2) writes each
byte as a printable character (``Ġ`` = space, ``Ċ`` = newline, ``æ`` = the raw byte 0xE6); SentencePiece (Llama-2,
Gemma) writes a space as ``▁`` and falls back to ``<0xNN>`` byte tokens; WordPiece (BERT) marks word continuations
with ``##``; character-level vocabularies store text as is. Comparing raw piece strings across families is what
makes the reference MinED map ``Ċ`` (a newline) to an arbitrary short token. Here every token is reduced to the
bytes it contributes to the decoded text, so ``Ġthe``, ``▁the`` and `` the`` are the same token everywhere.

Kinds:

* ``NORMAL``  — a piece of text (its surface is valid UTF-8).
* ``BYTE``    — one raw byte that is not text on its own: SentencePiece ``<0xNN>`` byte-fallback tokens, and
  byte-level BPE tokens whose bytes are not valid UTF-8 (a lone lead or continuation byte of a multi-byte
  character, e.g. ``æ`` = 0xE6). They map only to a token with the same bytes, never by edit distance.
* ``SPECIAL`` — control tokens (BOS/EOS/PAD/UNK, chat markers): surface ``b""``; they map by role or by name.
* ``UNUSED``  — reserved placeholders (``<unused12>``, ``[unused3]``, ``<|reserved_special_token_7|>``), holes in
  the id space and tokens with an empty surface: surface ``b""``, never mapped.

WordPiece is lossy on whitespace: a ``##x`` piece continues a word (no leading space) and every other word piece
gets one leading space, although BERT's pre-tokenizer also splits punctuation that had no space before it.

The module is pure: it reads the tokenizer's own JSON description (``backend_tokenizer.to_str()``) and duck-typed
attributes (``bos_token_id``...), and never imports transformers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from lmfuse.errors import TokenizerError

NORMAL, BYTE, SPECIAL, UNUSED = 0, 1, 2, 3
ROLES = ("bos", "eos", "pad", "unk")
FAMILIES = ("bytebpe", "sentencepiece", "wordpiece", "char")

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_UNUSED = re.compile(r"^(<unused\d+>|\[unused\d+\]|<\|reserved_special_token_\d+\|>|<extra_id_\d+>)$")


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable alphabet for the 256 bytes (``Ġ`` -> 0x20, ``Ċ`` -> 0x0A), inverted: char -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_GPT2_DECODER = gpt2_byte_decoder()


@dataclass
class TokenTable:
    """The surface of every id ``0 .. size-1`` of one tokenizer.

    ``surface[i]``: the exact UTF-8 bytes id ``i`` contributes to decoded text (``b""`` for special/unused ids).
    ``text[i]``: ``surface[i]`` decoded with ``errors="replace"``, used for edit distances.
    ``raw[i]``: the piece as the vocabulary writes it (``"Ġthe"``, ``"<0x0A>"``, ``"<s>"``), for reports and for
    the reference DTW's marker-stripped strings.
    ``kind``: int8 [size] of NORMAL / BYTE / SPECIAL / UNUSED. ``leading_space``: bool [size].
    ``roles``: ``{"bos": id, "eos": id, "pad": id, "unk": id}`` for the roles the tokenizer defines.
    """

    surface: list[bytes]
    text: list[str]
    raw: list[str]
    kind: np.ndarray
    roles: dict[str, int]
    leading_space: np.ndarray
    family: str = "char"
    name: str = ""

    @property
    def size(self) -> int:
        return len(self.surface)

    def __len__(self) -> int:
        return len(self.surface)

    @cached_property
    def content_hash(self) -> str:
        """A hash of everything a vocabulary map depends on (surfaces, kinds, raw pieces, roles)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.family, sorted(self.roles.items())]).encode())
        h.update(self.kind.tobytes())
        for s, r in zip(self.surface, self.raw, strict=True):
            h.update(len(s).to_bytes(4, "little"))
            h.update(s)
            h.update(r.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        return h.hexdigest()[:32]

    def ids_of_kind(self, kind: int) -> np.ndarray:
        return np.flatnonzero(self.kind == kind)


def _walk(node: Any) -> list[dict[str, Any]]:
    """Every component of a (possibly nested ``Sequence``) normalizer/decoder/pre-tokenizer JSON node."""
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("decoders", "normalizers", "pretokenizers", "processors"):
        for child in node.get(key) or []:
            out.extend(_walk(child))
    return out


def detect_family(spec: dict[str, Any]) -> str:
    """``bytebpe``, ``sentencepiece``, ``wordpiece`` or ``char`` from a ``tokenizer.json`` description."""
    model = spec.get("model") or {}
    parts = _walk(spec.get("decoder")) + _walk(spec.get("pre_tokenizer")) + _walk(spec.get("normalizer"))
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "bytebpe"
    if "Metaspace" in types or model.get("type") == "Unigram" or any(
        p.get("type") == "Replace" and "▁" in json.dumps(p, ensure_ascii=False) for p in parts
    ):
        return "sentencepiece"
    if model.get("type") == "WordPiece" or "WordPiece" in types:
        return "wordpiece"
    return "char"


def _model_vocab(model: dict[str, Any]) -> dict[int, str]:
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        return {int(i): t for t, i in vocab.items()}
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        return {i: (v[0] if isinstance(v, list | tuple) else v) for i, v in enumerate(vocab)}
    return {}


def _surface(piece: str, family: str, byte_fallback: bool, prefix: str) -> tuple[bytes, bool]:
    """(surface bytes, is a byte-fallback token) of one model piece."""
    if family == "bytebpe":
        if all(c in _GPT2_DECODER for c in piece):
            return bytes(_GPT2_DECODER[c] for c in piece), False
        return piece.encode("utf-8"), False
    if family == "sentencepiece":
        m = _BYTE_FALLBACK.match(piece) if byte_fallback else None
        if m:
            return bytes([int(m.group(1), 16)]), True
        return piece.replace("▁", " ").encode("utf-8"), False
    if family == "wordpiece":
        if prefix and piece.startswith(prefix) and len(piece) > len(prefix):
            return piece[len(prefix):].encode("utf-8"), False
        return (" " + piece).encode("utf-8"), False
    return piece.encode("utf-8"), False


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _roles(tokenizer: Any) -> dict[str, int]:
    roles = {}
    for role in ROLES:
        value = getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(value, int) and value >= 0:
            roles[role] = value
    return roles


def _light_spec(backend: Any) -> dict[str, Any] | None:
    """The parts of ``tokenizer.json`` a table needs, read through the Rust objects, for BPE and WordPiece
    models: serialising and parsing the whole description (its merges list: ~8 s for a 262k vocabulary)
    is most of a table's cost. ``None`` (use the full JSON) for other models or when an accessor is missing."""
    try:
        model = backend.model
        kind = type(model).__name__
        if kind not in ("BPE", "WordPiece"):
            return None  # Unigram vocabularies may repeat a piece: only the JSON list keeps every id

        def part(component: Any) -> Any:
            return json.loads(component.__getstate__()) if component is not None else None

        return {
            "model": {"type": kind, "vocab": backend.get_vocab(with_added_tokens=False),
                      "byte_fallback": getattr(model, "byte_fallback", False),
                      "continuing_subword_prefix": getattr(model, "continuing_subword_prefix", None)},
            "normalizer": part(backend.normalizer), "pre_tokenizer": part(backend.pre_tokenizer),
            "decoder": part(backend.decoder),
            "added_tokens": [{"id": i, "content": a.content, "special": a.special}
                             for i, a in backend.get_added_tokens_decoder().items()],
        }
    except (AttributeError, TypeError, ValueError):
        return None


def token_table(tokenizer: Any, name: str = "") -> TokenTable:
    """The :class:`TokenTable` of a HF fast tokenizer (or a bare ``tokenizers.Tokenizer``).

    Duck-typed: needs ``backend_tokenizer.to_str()`` (or ``to_str()``); uses ``len(tokenizer)``,
    ``*_token_id`` and ``all_special_ids`` when present.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str"):
        raise TokenizerError(f"expected a fast tokenizer (with backend_tokenizer.to_str()), got "
                             f"{type(tokenizer).__name__}; load the model's tokenizer.json (use_fast=True)")
    spec = _light_spec(backend) or json.loads(backend.to_str())
    model = spec.get("model") or {}
    family = detect_family(spec)
    pieces = _model_vocab(model)
    added = {int(a["id"]): a for a in spec.get("added_tokens") or []}
    byte_fallback = bool(model.get("byte_fallback")) or any(
        p.get("type") == "ByteFallback" for p in _walk(spec.get("decoder")))
    prefix = model.get("continuing_subword_prefix") or ("##" if family == "wordpiece" else "")
    roles = _roles(tokenizer)
    special_ids = set(roles.values()) | {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    try:
        size = len(tokenizer)
    except TypeError:
        size = 0
    size = max([size, max(pieces, default=-1) + 1, max(added, default=-1) + 1])

    surface: list[bytes] = [b""] * size
    raw: list[str] = [""] * size
    kind = np.full(size, UNUSED, dtype=np.int8)
    for i in range(size):
        a = added.get(i)
        piece = a["content"] if a is not None else pieces.get(i)
        if piece is None:  # a hole in the id space
            continue
        raw[i] = piece
        if _UNUSED.match(piece):
            continue
        if i in special_ids or (a is not None and a.get("special")):
            kind[i] = SPECIAL
            continue
        if a is not None and i not in pieces:
            s, is_byte = piece.encode("utf-8"), False  # added text tokens are matched and emitted verbatim
        else:
            s, is_byte = _surface(piece, family, byte_fallback, prefix)
        if not s:
            continue
        surface[i] = s
        kind[i] = BYTE if is_byte or not _valid_utf8(s) else NORMAL
    text = [s.decode("utf-8", errors="replace") for s in surface]
    leading = np.fromiter((s[:1] == b" " for s in surface), dtype=bool, count=size)
    return TokenTable(surface=surface, text=text, raw=raw, kind=kind, roles=roles, leading_space=leading,
                      family=family, name=name or str(getattr(tokenizer, "name_or_path", "") or ""))


def surfaces_of(table: TokenTable, ids: Any) -> list[str]:
    """Surface texts of a sequence of ids, the token strings ``align_dtw`` takes; ids outside the table give
    ``""`` (logit padding)."""
    return [table.text[i] if 0 <= i < table.size else "" for i in (int(x) for x in ids)]
