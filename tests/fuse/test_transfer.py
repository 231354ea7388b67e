"""Alignment onto the target: the fixed one-hot fallback, and aligned entries = projected source entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmfuse.fuse import store
from lmfuse.fuse.transfer import Groups, transfer_row


def _groups(spans: list[tuple[int, int, int, int]], checked: bool = False) -> Groups:
    a = np.asarray(spans, dtype=np.int64)
    return Groups(a[:, 0], a[:, 1], a[:, 2], a[:, 3], checked=checked)


def _row(fallback: str) -> dict[str, np.ndarray]:
    # Source tokens: 4, target tokens: 3. Groups: 1:1, then 2 source tokens <-> 1 target token, then 1:1.
    groups = _groups([(0, 1, 0, 1), (1, 3, 1, 2), (3, 4, 2, 3)])
    src_ids = np.array([[7, 8], [1, 2], [3, 4], [9, 5]])
    src_lp = np.log(np.array([[0.6, 0.4], [0.5, 0.5], [0.5, 0.5], [0.7, 0.3]], dtype=np.float32))
    tgt_ids = np.array([10, 11, 12])
    offsets = np.array([[0, 2], [2, 5], [5, 6]])
    return transfer_row(groups, src_ids, src_lp, np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), None,
                        tgt_ids, offsets, np.arange(7), fallback=fallback)


def test_one_hot_fallback_sits_on_the_predicted_token() -> None:
    out = _row("one-hot")
    # Entry 1 predicts target token 1 (id 11). The reference put the one-hot on the current input token (id 10).
    assert out["aligned"].tolist() == [True, False, True]
    assert out["topk_ids"][1].tolist() == [11, -1]
    assert out["topk_logp"][1, 0] == 0.0 and np.isneginf(out["topk_logp"][1, 1])
    # Aligned entries carry the source's entry at the first source token of the group.
    assert out["topk_ids"][0].tolist() == [7, 8] and out["topk_ids"][2].tolist() == [9, 5]


def test_mask_fallback_leaves_the_entry_empty() -> None:
    out = _row("mask")
    assert out["topk_ids"][1].tolist() == [-1, -1]


def test_group_scores_are_nll_per_byte_of_the_group() -> None:
    out = _row("one-hot")
    assert out["score"].tolist() == pytest.approx([0.5, (2.0 + 3.0) / 3, 4.0])


def test_dtw_groups_must_agree_through_the_vocabulary_map() -> None:
    groups = _groups([(0, 1, 0, 1), (1, 2, 1, 2)], checked=True)
    src_map = np.array([10, 99])  # source token 1 maps to 99, but the target token is 11
    out = transfer_row(groups, np.array([[1], [2]]), np.zeros((2, 1), np.float32), np.ones(2, np.float32),
                       src_map, np.array([10, 11]), np.array([[0, 1], [1, 2]]), np.arange(3))
    assert out["aligned"].tolist() == [True, False]


def test_aligned_entries_are_the_projected_source_distribution(prepared) -> None:  # type: ignore[no-untyped-def]
    from lmfuse.alignment import build_vocab_map, project_topk

    out = prepared.out
    src_m, tgt_m = prepared.members["sentencepiece"], prepared.members["bytebpe"]
    vmap = build_vocab_map(src_m.tokenizer, tgt_m.tokenizer, method="mined", src_width=src_m.logits_width,
                           tgt_width=tgt_m.logits_width)
    src = store.read_shard(out / "extract/sentencepiece/shard-00000.safetensors")
    tgt = store.read_shard(out / "extract/bytebpe/shard-00000.safetensors")
    al = store.read_shard(out / "align/sentencepiece/shard-00000.safetensors")
    checked = 0
    for r in range(tgt.num_rows):
        s_off, t_off = src.row(r, "offsets").astype(int), tgt.row(r, "offsets").astype(int)
        s_ids = store.unpack_ids(src.row(r, "topk_ids"))
        aligned = al.row(r, "aligned").astype(bool)
        assert 0 < aligned.sum() < len(aligned)  # different tokenizers: some 1:1, some not
        for c in np.nonzero(aligned)[0]:
            a = int(np.nonzero(s_off[:, 0] == t_off[c, 0])[0][0])  # same preceding text
            ids, lp = project_topk(torch.as_tensor(s_ids[a]), torch.as_tensor(
                src.row(r, "topk_logp")[a].astype(np.float32)), vmap)
            got = store.unpack_ids(al.row(r, "topk_ids")[c])
            assert got.tolist() == ids.tolist()
            np.testing.assert_allclose(al.row(r, "topk_logp")[c].astype(np.float32), lp.numpy(), atol=2e-3)
            checked += 1
        fb = ~aligned
        np.testing.assert_array_equal(store.unpack_ids(al.row(r, "topk_ids"))[fb, 0],
                                      store.unpack_ids(tgt.row(r, "ids"))[fb])
    assert checked > 10


def test_the_target_aligns_to_itself_exactly(prepared) -> None:  # type: ignore[no-untyped-def]
    tgt = store.read_shard(prepared.out / "extract/bytebpe/shard-00001.safetensors")
    al = store.read_shard(prepared.out / "align/bytebpe/shard-00001.safetensors")
    assert al.tokens["aligned"].all()
    np.testing.assert_array_equal(al.tokens["topk_ids"], tgt.tokens["topk_ids"])
