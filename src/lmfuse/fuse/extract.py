"""Stage 1: run one member over the corpus rows and store its top-k next-token distributions.

Stored per token j of a row (the member's own tokenization, no special tokens):

* ``ids`` — the token id ``[Ntok]``; ``offsets`` — its character span ``[Ntok, 2]`` (uint16 when every
  offset of the shard fits, else int32);
* ``topk_ids`` ``[Ntok, k]`` and ``topk_logp`` (fp16) ``[Ntok, k]`` — the top-k of the distribution
  **that predicts token j**, i.e. the model's output at the position of token j - 1 (the prefix
  token for j = 0; position i predicts token i + 1). Log-probabilities are of the full softmax, not
  renormalised over the k;
* ``nll`` (fp16) ``[Ntok]`` — minus the log-probability of token j itself.

Per row: ``key`` (row index in the corpus), ``hash`` (of the text), ``nll_sum`` (float32, total nats),
``n_bytes`` (UTF-8 bytes of the text). At k = 10 with a vocabulary below 65,535 a token costs
2 + 4 + 20 + 20 + 2 = 48 bytes; wider vocabularies store ids in 3 bytes (``fuse.store``), 3 + 4 + 30 +
20 + 2 = 59 bytes (the reference stores ~173).

**Contexts** (instruction data, ProFuser): with ``contexts``, row r is a response and the member reads
``[prefix] + encode(contexts[r]) + encode(rows[r])`` — its own rendered prompt, then the response,
encoded separately so no token straddles the boundary (``fuse/instruct.py``). Only the response tokens
are stored, with offsets relative to the response, so every member's rows cover the same text and the
stages after extraction are unchanged; ``nll_sum`` is the response's NLL given the prompt. Extra per-row
arrays: ``context_chars`` (where the response starts in the member's full text, in characters) and
``n_context`` (its prompt tokens).

Rows are split into shards of ``rows_per_shard``; shard s is done by process ``s % num_shards ==
shard_index``, so several processes (``accelerate launch`` or ``--num-shards/--shard-index``) share
one corpus. A shard that exists on disk is complete and skipped, so a killed run resumes at the first
unfinished shard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmfuse.errors import InputError
from lmfuse.fuse import store
from lmfuse.fuse.sharded import sharded_stage
from lmfuse.models.member import Member, check_finite


def corpus_fingerprint(rows: Sequence[str]) -> str:
    """A short hash of all rows in order: two stages agree on the corpus only if this matches."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for r in rows:
        h.update(store.text_hash(r).to_bytes(8, "little"))
    return h.hexdigest()


def extract_member(
    member: Member,
    rows: Sequence[str],
    out_dir: Path,
    top_k: int = 10,
    batch_size: int = 8,
    rows_per_shard: int = 256,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: bool = True,
    contexts: Sequence[str] | None = None,
) -> Path:
    """Extract ``member``'s top-k over ``rows`` into ``out_dir`` (resumable). Returns ``out_dir``.

    ``contexts`` (one per row): text the member reads before each row, not stored (see the module doc).

    Shards and the manifest as every stage writes them (``fuse/sharded.py``).
    """
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    total = math.ceil(len(rows) / rows_per_shard)
    config = {
        "stage": "extract", "member": member.name, "top_k": top_k, "rows_per_shard": rows_per_shard,
        "num_rows": len(rows), "corpus": corpus_fingerprint(rows), "width": member.logits_width,
        "prefix_token_id": member.prefix_token_id, "format": 1,
    }
    if contexts is not None:
        if len(contexts) != len(rows):
            raise InputError(f"{len(contexts)} contexts for {len(rows)} rows")
        config["contexts"] = corpus_fingerprint(contexts)
    bar = tqdm(total=None, unit="tok", unit_scale=True, disable=not progress, desc=f"extract {member.name}")

    def make_shard(s: int, path: Path) -> None:
        lo, hi = s * rows_per_shard, (s + 1) * rows_per_shard
        store.write_shard(path, extract_rows(member, rows[lo:hi], first_key=lo, top_k=top_k, batch_size=batch_size,
                                             bar=bar, contexts=None if contexts is None else contexts[lo:hi]))

    try:
        sharded_stage(out_dir, config, total, make_shard, split=(num_shards, shard_index))
    finally:
        bar.close()
    return out_dir


def extract_rows(member: Member, rows: Sequence[str], first_key: int = 0, top_k: int = 10,
                 batch_size: int = 8, bar: Any = None, contexts: Sequence[str] | None = None) -> store.Shard:
    """Top-k distributions of ``member`` for every token of ``rows`` (one shard, in row order)."""
    width = member.logits_width
    k = min(top_k, width)
    encs = [member.encode(text) for text in rows]
    ctx = [member.encode(c).ids for c in contexts] if contexts is not None else [[] for _ in rows]
    results: list[dict[str, np.ndarray] | None] = [None] * len(rows)
    # Sort by length so batches pad little; results go back to row order.
    order = sorted(range(len(rows)), key=lambda r: len(encs[r].ids))
    prefix = member.prefix_token_id
    for b in range(0, len(order), batch_size):
        batch_rows = [r for r in order[b : b + batch_size] if encs[r].ids]
        for r in order[b : b + batch_size]:
            if not encs[r].ids:
                results[r] = _empty(k)
        if not batch_rows:
            continue
        started = time.perf_counter()
        logits, _ = member.logits([[prefix, *ctx[r], *encs[r].ids] for r in batch_rows])
        for row, r in enumerate(batch_rows):
            ids = torch.as_tensor(encs[r].ids, dtype=torch.long, device=logits.device)
            # Positions c..c+T-1 of [prefix, context (c tokens), ids...] predict ids[0..T-1]; the last
            # position predicts past the row.
            c = len(ctx[r])
            lp = torch.log_softmax(logits[row, c : c + len(ids)].float(), dim=-1)
            check_finite(lp, member.name)
            values, index = lp.topk(k, dim=-1)
            nll = -lp.gather(-1, ids[:, None])[:, 0]
            results[r] = {"topk_logp": values.cpu().numpy(), "topk_ids": index.cpu().numpy(),
                          "nll": nll.cpu().numpy()}
        del logits
        if bar is not None:
            bar.update(sum(len(encs[r].ids) for r in batch_rows))
            bar.set_postfix(batch_s=f"{time.perf_counter() - started:.2f}")
    done = [x for x in results if x is not None]
    max_offset = max((e.offsets[-1][1] for e in encs if e.offsets), default=0)
    offset_dtype = np.uint16 if max_offset < store.UINT16_NONE else np.int32
    tokens = {
        "ids": [store.pack_ids(np.asarray(e.ids, dtype=np.int64), width) for e in encs],
        "offsets": [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encs],
        "topk_ids": [store.pack_ids(x["topk_ids"], width) for x in done],
        "topk_logp": [x["topk_logp"] for x in done],
        "nll": [x["nll"] for x in done],
    }
    id_type = store.id_dtype(width)
    dtypes = {"ids": id_type, "offsets": offset_dtype, "topk_ids": id_type, "topk_logp": np.float16,
              "nll": np.float16, "key": np.int64, "hash": np.int64, "nll_sum": np.float32, "n_bytes": np.int64}
    row_arrays = {
        "key": [first_key + r for r in range(len(rows))],
        "hash": [store.text_hash(t) for t in rows],
        "nll_sum": [float(x["nll"].astype(np.float64).sum()) for x in done],
        "n_bytes": [len(t.encode("utf-8")) for t in rows],
    }
    if contexts is not None:
        row_arrays["context_chars"] = [len(c) for c in contexts]
        row_arrays["n_context"] = [len(c) for c in ctx]
        dtypes.update(context_chars=np.int64, n_context=np.int64)
    meta = {"member": member.name, "width": str(width), "top_k": str(k),
            "prefix_token_id": str(member.prefix_token_id)}
    return store.Shard.from_rows(row_arrays, tokens, meta, dtypes)


def _empty(k: int) -> dict[str, np.ndarray]:
    return {"topk_logp": np.zeros((0, k), np.float32), "topk_ids": np.zeros((0, k), np.int64),
            "nll": np.zeros(0, np.float32)}
