"""Storage round-trips with declared dtypes, atomic writes, configuration checks; corpus chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmfuse.errors import CorruptFileError, InputError
from lmfuse.fuse import store
from lmfuse.fuse.corpus import chunk_text, corpus_rows


def test_ids_use_uint16_below_65535_and_keep_minus_one() -> None:
    ids = np.array([[0, 5, -1], [65533, 2, -1]], dtype=np.int64)
    packed = store.pack_ids(ids, 65534)
    assert packed.dtype == np.uint16
    np.testing.assert_array_equal(store.unpack_ids(packed), ids)
    wide = store.pack_ids(ids, 151_936)
    assert wide.dtype == np.int32
    np.testing.assert_array_equal(store.unpack_ids(wide), ids)


def test_shard_round_trip_is_ragged_and_typed(tmp_path: Path) -> None:
    rows = {"key": [3, 4], "nll_sum": [1.5, 2.5]}
    tokens = {"topk_logp": [np.zeros((2, 3)), np.ones((5, 3))], "ids": [np.arange(2), np.arange(5)]}
    shard = store.Shard.from_rows(rows, tokens, {"member": "m"},
                                  {"key": np.int64, "nll_sum": np.float32, "topk_logp": np.float16,
                                   "ids": np.uint16})
    path = tmp_path / "s.safetensors"
    store.write_shard(path, shard)
    assert not list(tmp_path.glob("*.tmp"))
    back = store.read_shard(path)
    assert back.meta["member"] == "m"
    assert back.num_rows == 2 and back.num_tokens == 7
    assert back.tokens["topk_logp"].dtype == np.float16 and back.tokens["ids"].dtype == np.uint16
    np.testing.assert_array_equal(back.row(1, "ids"), np.arange(5))
    np.testing.assert_array_equal(back.rows["key"], [3, 4])


def _wide_shard(ids: list[np.ndarray]) -> store.Shard:
    return store.Shard.from_rows({"key": list(range(len(ids)))}, {"topk_ids": ids}, {"member": "m"},
                                 {"key": np.int64, "topk_ids": np.int32})


def test_wide_ids_take_three_bytes_on_disk_and_read_back_as_int32(tmp_path: Path) -> None:
    from safetensors import safe_open

    # Gemma's vocabulary (262,144) needs more than 16 bits; -1 is a freed top-k slot.
    ids = [np.array([[0, 262_143, -1], [65_536, 151_935, 2]]), np.array([[16_777_214, -1, 7]])]
    path = tmp_path / "s.safetensors"
    store.write_shard(path, _wide_shard(ids))
    with safe_open(str(path), framework="np") as f:
        on_disk = f.get_tensor("tok/topk_ids")
    assert on_disk.dtype == np.uint8 and on_disk.shape == (3, 3, 3)
    back = store.read_shard(path)
    assert back.tokens["topk_ids"].dtype == np.int32
    np.testing.assert_array_equal(back.row(0, "topk_ids"), ids[0])
    np.testing.assert_array_equal(back.row(1, "topk_ids"), ids[1])
    np.testing.assert_array_equal(store.unpack_ids(back.row(0, "topk_ids"))[0], [0, 262_143, -1])
    assert back.meta == {"member": "m"}  # the format's own metadata is not handed back


def test_int32_values_beyond_24_bits_stay_four_bytes(tmp_path: Path) -> None:
    ids = [np.array([[1 << 24, 3]])]
    path = tmp_path / "s.safetensors"
    store.write_shard(path, _wide_shard(ids))
    back = store.read_shard(path)
    assert back.tokens["topk_ids"].dtype == np.int32
    np.testing.assert_array_equal(back.tokens["topk_ids"], ids[0])


def test_three_byte_codec_round_trips_the_whole_range() -> None:
    values = np.array([-1, 0, 1, 255, 256, 65_535, 65_536, store.U24_NONE - 1], dtype=np.int32)
    enc = store.encode_u24(values)
    assert enc.dtype == np.uint8 and enc.shape == (8, 3)
    np.testing.assert_array_equal(store.decode_u24(enc), values)
    np.testing.assert_array_equal(enc[0], [255, 255, 255])  # -1 is the sentinel 0xFFFFFF
    np.testing.assert_array_equal(enc[4], [0, 1, 0])  # little-endian


def test_format_1_shards_still_read(tmp_path: Path) -> None:
    from safetensors.numpy import save

    # What the first version wrote: every array in its in-memory dtype, no format metadata.
    ids = np.array([[5, 200_000, -1]], dtype=np.int32)
    path = tmp_path / "old.safetensors"
    path.write_bytes(save({"row_ptr": np.array([0, 1], dtype=np.int64), "row/key": np.array([0]),
                           "tok/topk_ids": ids}, metadata={"member": "m"}))
    back = store.read_shard(path)
    assert back.tokens["topk_ids"].dtype == np.int32
    np.testing.assert_array_equal(back.tokens["topk_ids"], ids)
    assert back.meta == {"member": "m"}


def test_newer_or_inconsistent_formats_are_clear_errors(tmp_path: Path) -> None:
    from safetensors.numpy import save

    base = {"row_ptr": np.array([0, 1], dtype=np.int64), "tok/topk_ids": np.zeros((1, 3), np.int32)}
    newer = tmp_path / "newer.safetensors"
    newer.write_bytes(save(base, metadata={"lmfuse.format": "3"}))
    with pytest.raises(CorruptFileError, match=r"newer\.safetensors.*format '3'.*formats 1\.\.2"):
        store.read_shard(newer)
    bad = tmp_path / "bad24.safetensors"
    bad.write_bytes(save(base, metadata={"lmfuse.format": "2", "lmfuse.u24": "topk_ids"}))
    with pytest.raises(CorruptFileError, match=r"topk_ids.*uint8"):
        store.read_shard(bad)
    with pytest.raises(ValueError, match="reserved"):
        store.write_shard(tmp_path / "x.safetensors",
                          store.Shard(np.array([0]), {}, {}, {"lmfuse.format": "9"}))


def test_truncated_shard_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    with pytest.raises(CorruptFileError, match=r"bad\.safetensors"):
        store.read_shard(path)


def test_resuming_with_another_configuration_is_refused(tmp_path: Path) -> None:
    store.check_config(tmp_path, {"top_k": 10})
    store.check_config(tmp_path, {"top_k": 10})
    with pytest.raises(CorruptFileError, match="top_k"):
        store.check_config(tmp_path, {"top_k": 5})


def test_chunks_concatenate_back_and_respect_the_limit() -> None:
    text = "short line\n" * 7 + "x" * 95 + "\nend"
    pieces = chunk_text(text, 40)
    assert "".join(pieces) == text
    assert all(len(p) <= 40 for p in pieces)
    with pytest.raises(InputError):
        chunk_text(text, 0)


def test_corpus_rows_from_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "alpha beta\\ngamma"}\n{"text": "  "}\n{"text": "delta"}\n')
    assert corpus_rows(path, max_chars=100) == ["alpha beta\ngamma", "delta"]
    with pytest.raises(InputError, match="column"):
        corpus_rows(path, text_field="body")
