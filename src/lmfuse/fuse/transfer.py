"""Stage 2: move each source's stored distributions onto the target's tokenization and vocabulary.

For every row, the source's and the target's tokens are paired into *groups* — ``((a, b), (c, d))``:
source tokens ``a..b-1`` and target tokens ``c..d-1`` cover the same text — by character offsets
(exact, O(n + m)) or, when offsets are unusable, by DTW over token strings (``lmfuse.alignment``).

Target token ``c`` (stored entry ``c`` predicts target token ``c``; see ``extract``) gets:

* **aligned** — when its group is one-to-one (``b - a == 1 == d - c``) and the source token maps to
  the target token through the vocabulary map (always true for offset groups, which cover identical
  text; checked for DTW groups, as the reference's EM/MinED criterion): the source's top-k at ``a``
  (which predicts source token ``a`` from the same preceding text) projected into the target
  vocabulary, duplicates merged by logsumexp;
* **fallback** otherwise (the reference's one-to-many / many-to-one case): ``one-hot`` on target
  token ``c`` — *the token this entry predicts*. The reference puts the one-hot on the current input
  token (the one before), teaching the model to repeat itself (FuseLLM issue #27); ``mask`` leaves the
  entry empty, so the position drops out of the fusion loss for that source.

Like the reference, a matched position carries the source's prediction at the source's granularity
(quirk Q13): the approximation is accepted and documented, not hidden.

Each entry also gets a ``score``: the source's NLL (nats) of its group's tokens divided by the UTF-8
bytes of the group's text, so token-level fusion compares sources on the same span.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from lmfuse.config import OneOf
from lmfuse.errors import CorruptFileError, InputError
from lmfuse.fuse import store
from lmfuse.fuse.config import section
from lmfuse.fuse.sharded import sharded_stage

VOCAB_MAPS = ("mined", "exact")
SEQUENCES = ("offsets", "dtw")
FALLBACKS = ("one-hot", "mask")


@section
class AlignConfig:
    """The recipe's ``align`` section."""

    vocab: Annotated[str, OneOf(VOCAB_MAPS, "vocabulary map")] = "mined"
    """Vocabulary map: ``mined`` (exact, else minimum edit distance; the paper's MinED) or ``exact``."""
    sequence: Annotated[str, OneOf(SEQUENCES, "sequence alignment")] = "offsets"
    """Token pairing: ``offsets`` (character offsets, DTW fallback) or ``dtw`` (the reference)."""
    fallback: Annotated[str, OneOf(FALLBACKS, "alignment fallback")] = "one-hot"
    """Unaligned target positions: ``one-hot`` on the predicted token, or ``mask`` (no teacher)."""


@dataclass(frozen=True)
class Groups:
    """Token groups of one row as int arrays ``[G]``: source span ``a..b-1``, target span ``c..d-1``."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray
    checked: bool  # True: one-to-one groups must also agree through the vocabulary map (DTW groups)

    @staticmethod
    def identity(n: int) -> Groups:
        r = np.arange(n, dtype=np.int64)
        return Groups(r, r + 1, r, r + 1, checked=False)


def byte_positions(text: str) -> np.ndarray:
    """``pos[i]`` = UTF-8 byte offset of character i; ``[len(text) + 1]`` int64."""
    lengths = np.fromiter((len(ch.encode("utf-8")) for ch in text), dtype=np.int64, count=len(text))
    out = np.zeros(len(text) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def transfer_row(
    groups: Groups,
    src_topk_ids: np.ndarray,
    src_topk_logp: np.ndarray,
    src_nll: np.ndarray,
    src_map: np.ndarray | None,
    tgt_ids: np.ndarray,
    tgt_offsets: np.ndarray,
    byte_pos: np.ndarray,
    fallback: str = "one-hot",
) -> dict[str, np.ndarray]:
    """One row's teacher entries in the target tokenization (pure numpy; no I/O).

    Args:
        groups: the row's token groups (cover both sequences, in order).
        src_topk_ids: ``[S, k]`` source top-k ids, already projected into the target vocabulary (-1 = none).
        src_topk_logp: ``[S, k]`` their log-probabilities (-inf = none).
        src_nll: ``[S]`` the source's NLL of each of its own tokens.
        src_map: ``[S]`` each source *input* token mapped to a target id (-1 unmapped), for checked groups;
            None when groups need no check.
        tgt_ids: ``[T]`` target token ids; ``tgt_offsets``: ``[T, 2]`` their character spans.
        byte_pos: ``[chars + 1]`` character -> UTF-8 byte offset of the row text.
        fallback: ``one-hot`` (on the predicted token ``tgt_ids[c]``) or ``mask`` (empty entry).

    Returns:
        ``topk_ids`` ``[T, k]`` int64, ``topk_logp`` ``[T, k]`` float32, ``aligned`` ``[T]`` bool,
        ``score`` ``[T]`` float32 (group NLL per byte).
    """
    T, k = len(tgt_ids), src_topk_ids.shape[1]
    sizes = groups.d - groups.c
    if int(sizes.sum()) != T:
        raise CorruptFileError(f"alignment groups cover {int(sizes.sum())} target tokens, the row has {T}")
    g_of = np.repeat(np.arange(len(sizes)), sizes)  # [T] group of each target token
    one_to_one = (groups.b - groups.a == 1) & (sizes == 1)
    if groups.checked and src_map is not None:
        agree = np.zeros_like(one_to_one)
        ok = one_to_one.nonzero()[0]
        agree[ok] = src_map[groups.a[ok]] == tgt_ids[groups.c[ok]]
        one_to_one = one_to_one & agree
    aligned = one_to_one[g_of]
    src_pos = groups.a[g_of]
    ids = np.full((T, k), -1, dtype=np.int64)
    logp = np.full((T, k), -np.inf, dtype=np.float32)
    ids[aligned] = src_topk_ids[src_pos[aligned]]
    logp[aligned] = src_topk_logp[src_pos[aligned]]
    if fallback == "one-hot":
        # The entry at c predicts target token c, so its one-hot sits on tgt_ids[c] (reference: tgt_ids[c-1]).
        fb = ~aligned
        ids[fb, 0] = tgt_ids[fb]
        logp[fb, 0] = 0.0
    # Group scores: source NLL of the group's tokens per UTF-8 byte of the group's text.
    cum = np.concatenate([[0.0], np.cumsum(src_nll.astype(np.float64))])
    group_nll = cum[groups.b] - cum[groups.a]
    if T:
        start = tgt_offsets[groups.c, 0].astype(np.int64)
        end = tgt_offsets[groups.d - 1, 1].astype(np.int64)
        nbytes = np.maximum(byte_pos[end] - byte_pos[start], 1)
    else:
        nbytes = np.ones(0, dtype=np.int64)
    score = (group_nll / nbytes).astype(np.float32)[g_of]
    return {"topk_ids": ids, "topk_logp": logp, "aligned": aligned, "score": score}


class Aligner:
    """Pairs one source's rows with the target's: groups and vocabulary projection (uses ``lmfuse.alignment``)."""

    def __init__(self, src_tok: Any, tgt_tok: Any, src_width: int, tgt_width: int, vocab: str = "mined",
                 sequence: str = "offsets") -> None:
        self.identity = _same_vocab(src_tok, tgt_tok)
        self.sequence = sequence
        self.src_tok = src_tok
        self.tgt_tok = tgt_tok
        self.vmap: Any = None
        if not self.identity:
            from lmfuse.alignment import build_vocab_map, token_table

            # One table per tokenizer (reading a 262k vocabulary takes seconds), shared by the map and the rows.
            src_table, tgt_table = token_table(src_tok), token_table(tgt_tok)
            self.vmap = build_vocab_map(src_table, tgt_table, method=vocab, src_width=src_width,
                                        tgt_width=tgt_width)
            self._src_text = src_table.text
            self._tgt_text = tgt_table.text

    def groups(self, src_ids: np.ndarray, src_offsets: np.ndarray, tgt_ids: np.ndarray,
               tgt_offsets: np.ndarray) -> Groups:
        if self.identity:
            if not np.array_equal(src_ids, tgt_ids):
                raise CorruptFileError("same tokenizer on both sides but the rows' token ids differ")
            return Groups.identity(len(tgt_ids))
        from lmfuse.alignment import align_dtw, align_offsets

        alignment = None
        checked = False
        if self.sequence == "offsets":
            try:
                alignment = align_offsets([tuple(o) for o in src_offsets.tolist()],
                                          [tuple(o) for o in tgt_offsets.tolist()])
            except InputError:
                alignment = None  # offsets that go backwards or are malformed: fall back to DTW
        if alignment is None:
            checked = True
            alignment = align_dtw([self._src_text[i] for i in src_ids.tolist()],
                                  [self._tgt_text[i] for i in tgt_ids.tolist()])
        spans = np.asarray([(a, b, c, d) for (a, b), (c, d) in alignment.groups], dtype=np.int64).reshape(-1, 4)
        return Groups(spans[:, 0], spans[:, 1], spans[:, 2], spans[:, 3], checked=checked)

    def project(self, topk_ids: np.ndarray, topk_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[S, k]`` source-vocabulary top-k -> target vocabulary (duplicates merged)."""
        if self.identity:
            return topk_ids, topk_logp
        from lmfuse.alignment import project_topk

        ids, logp = project_topk(torch.as_tensor(topk_ids), torch.as_tensor(topk_logp, dtype=torch.float32),
                                 self.vmap)
        return np.asarray(ids, dtype=np.int64), np.asarray(logp, dtype=np.float32)

    def map_inputs(self, src_ids: np.ndarray) -> np.ndarray | None:
        if self.identity:
            return None
        index = np.asarray(self.vmap.index, dtype=np.int64)
        return index[src_ids]


def _same_vocab(a: Any, b: Any) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


def align_source(
    src_dir: Path,
    tgt_dir: Path,
    out_dir: Path,
    rows: list[str],
    aligner: Aligner,
    tgt_width: int,
    fallback: str = "one-hot",
    progress: bool = True,
) -> Path:
    """Align every shard of one source's extraction onto the target's extraction (resumable)."""
    src_man = store.read_json(src_dir / "manifest.json")
    tgt_man = store.read_json(tgt_dir / "manifest.json")
    if src_man["corpus"] != tgt_man["corpus"] or src_man["rows_per_shard"] != tgt_man["rows_per_shard"]:
        raise CorruptFileError(
            f"{str(src_dir)!r} and {str(tgt_dir)!r} were extracted from different corpora or shardings"
        )
    config = {"stage": "align", "source": src_man["member"], "target": tgt_man["member"],
              "corpus": tgt_man["corpus"], "fallback": fallback, "identity": aligner.identity,
              "sequence": aligner.sequence, "num_shards": tgt_man["num_shards"], "format": 1}

    def make_shard(s: int, path: Path) -> None:
        src = store.read_shard(store.shard_path(src_dir, s))
        tgt = store.read_shard(store.shard_path(tgt_dir, s))
        store.write_shard(path, align_shard(src, tgt, rows, aligner, tgt_width, fallback))

    sharded_stage(out_dir, config, tgt_man["num_shards"], make_shard,
                  desc=f"align {src_man['member']} -> {tgt_man['member']}", progress=progress)
    return out_dir


def align_shard(src: store.Shard, tgt: store.Shard, rows: list[str], aligner: Aligner, tgt_width: int,
                fallback: str) -> store.Shard:
    """One shard of a source, in the target's tokenization; rows are paired by key and text hash."""
    if not (np.array_equal(src.rows["key"], tgt.rows["key"]) and np.array_equal(src.rows["hash"], tgt.rows["hash"])):
        raise CorruptFileError("source and target shards hold different rows (keys or text hashes differ)")
    proj_ids, proj_logp = aligner.project(store.unpack_ids(src.tokens["topk_ids"]),
                                          src.tokens["topk_logp"].astype(np.float32))
    src_inputs = store.unpack_ids(src.tokens["ids"])
    mapped_inputs = aligner.map_inputs(src_inputs)
    parts: dict[str, list[np.ndarray]] = {"topk_ids": [], "topk_logp": [], "aligned": [], "score": []}
    for r in range(tgt.num_rows):
        key = int(tgt.rows["key"][r])
        text = rows[key]
        if store.text_hash(text) != int(tgt.rows["hash"][r]):
            raise CorruptFileError(f"row {key}: the corpus text changed since extraction")
        lo, hi = src.row_ptr[r], src.row_ptr[r + 1]
        tgt_ids = store.unpack_ids(tgt.row(r, "ids"))
        tgt_offsets = tgt.row(r, "offsets").astype(np.int64)
        groups = aligner.groups(src_inputs[lo:hi], src.row(r, "offsets").astype(np.int64), tgt_ids, tgt_offsets)
        out = transfer_row(groups, proj_ids[lo:hi], proj_logp[lo:hi], src.row(r, "nll").astype(np.float32),
                           None if mapped_inputs is None else mapped_inputs[lo:hi], tgt_ids, tgt_offsets,
                           byte_positions(text), fallback)
        for name in parts:
            parts[name].append(out[name])
    k = proj_ids.shape[1]
    width_ids = [store.pack_ids(p, tgt_width) for p in parts["topk_ids"]]
    rows_out = {"key": tgt.rows["key"], "hash": tgt.rows["hash"], "nll_sum": src.rows["nll_sum"],
                "n_tokens": np.diff(src.row_ptr), "n_bytes": src.rows["n_bytes"]}
    dtypes = {"topk_ids": store.id_dtype(tgt_width), "topk_logp": np.float16, "aligned": np.uint8,
              "score": np.float16, "key": np.int64, "hash": np.int64, "nll_sum": np.float32,
              "n_tokens": np.int64, "n_bytes": np.int64}
    tokens = {"topk_ids": width_ids, "topk_logp": parts["topk_logp"], "aligned": parts["aligned"],
              "score": parts["score"]}
    meta = {"source": src.meta.get("member", ""), "top_k": str(k), "width": str(tgt_width)}
    return store.Shard.from_rows(rows_out, tokens, meta, dtypes)
