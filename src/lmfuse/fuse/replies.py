"""ProFuser's generation stage: every candidate answers every prompt with its own chat template.

Prompts are split into shards of ``rows_per_shard``, one JSON file each, split over processes and
resumed as every stage's (``fuse/sharded.py``); ``config.json`` refuses a resume with other settings or
another tokenizer, and the manifest (written last) records the decoding settings.

Decoding: batched, left-padded (``Member.generate``), greedy or sampled. Sampling in shard s runs
under the seed ``seed + s`` (the global RNG is restored afterwards), so a shard's responses do not depend
on which shards ran before it in this process — resumed and uninterrupted runs draw the same responses.
A reply stops at the member's end-of-turn token or EOS (``instruct.stop_ids``) and, in the plain format,
at the next ``"\\nUser:"``; it is decoded without special tokens and stripped of surrounding whitespace.

Shard file: ``{"key": [...], "prompt_hash": [...], "response": [...], "n_tokens": [...], "stopped": [...]}``
(``n_tokens`` generated tokens before the stop; ``stopped`` false when ``max_new_tokens`` cut the reply).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lmfuse.errors import InputError
from lmfuse.fuse import store
from lmfuse.fuse.extract import corpus_fingerprint
from lmfuse.fuse.instruct import cut_reply, stop_ids
from lmfuse.fuse.recipe import GenerateConfig
from lmfuse.fuse.sharded import sharded_stage
from lmfuse.models.member import Member


def shard_file(directory: Path, index: int) -> Path:
    return directory / f"shard-{index:05d}.json"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a vocabulary: a resumed stage must decode with the same tokenizer."""
    return corpus_fingerprint([f"{t}\t{i}" for t, i in sorted(tokenizer.get_vocab().items())])


def generate_member(member: Member, prompts: Sequence[str], out_dir: Path, cfg: GenerateConfig,
                    templated: bool, num_shards: int = 1, shard_index: int = 0, progress: bool = True) -> Path:
    """Generate ``member``'s reply to every rendered prompt into ``out_dir`` (resumable). Returns ``out_dir``."""
    total = math.ceil(len(prompts) / cfg.rows_per_shard)
    config = {"stage": "generate", "member": member.name, "prompts": corpus_fingerprint(prompts),
              "tokenizer": tokenizer_fingerprint(member.tokenizer),
              "num_rows": len(prompts), "templated": templated, "stop_ids": stop_ids(member.tokenizer, templated),
              **asdict(cfg), "format": 1}

    def make_shard(s: int, path: Path) -> None:
        lo = s * cfg.rows_per_shard
        chunk = list(prompts[lo : lo + cfg.rows_per_shard])
        replies = generate_rows(member, chunk, cfg, templated, seed=cfg.seed + s)
        store.write_json(path, {
            "key": list(range(lo, lo + len(chunk))), "prompt_hash": [store.text_hash(p) for p in chunk],
            "response": [r[0] for r in replies], "n_tokens": [r[1] for r in replies],
            "stopped": [r[2] for r in replies]})

    sharded_stage(out_dir, config, total, make_shard, shard_file=shard_file, split=(num_shards, shard_index),
                  desc=f"generate {member.name}", progress=progress)
    return out_dir


def generate_rows(member: Member, prompts: Sequence[str], cfg: GenerateConfig, templated: bool,
                  seed: int) -> list[tuple[str, int, bool]]:
    """``(reply, generated tokens, stopped)`` for each prompt, batched (order kept)."""
    tok = member.tokenizer
    stops = stop_ids(tok, templated)
    encs = [[member.prefix_token_id, *member.encode(p).ids] for p in prompts]
    limit = member.context_length - cfg.max_new_tokens
    too_long = [i for i, e in enumerate(encs) if len(e) > limit]
    if too_long:
        raise InputError(f"member {member.name!r}: prompt {too_long[0]} has {len(encs[too_long[0]])} tokens; with "
                         f"generate.max_new_tokens={cfg.max_new_tokens} it exceeds the context of "
                         f"{member.context_length} (lower max_new_tokens or data.max_chars)")
    # Sorted by length so batches pad little; the results go back to prompt order.
    order = sorted(range(len(prompts)), key=lambda i: len(encs[i]))
    out: list[tuple[str, int, bool] | None] = [None] * len(prompts)
    devices = [member.device] if member.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for b in range(0, len(order), cfg.batch_size):
            rows = order[b : b + cfg.batch_size]
            new = member.generate([encs[i] for i in rows], cfg.max_new_tokens, stops, do_sample=cfg.do_sample,
                                  temperature=cfg.temperature, top_p=cfg.top_p)
            for i, ids in zip(rows, new, strict=True):
                cut = next((j for j, t in enumerate(ids) if t in stops), None)
                kept = ids if cut is None else ids[:cut]
                text = tok.decode(kept, skip_special_tokens=True)
                out[i] = (cut_reply(text, templated), len(kept), cut is not None)
    return [x for x in out if x is not None]


def read_generations(out_dir: Path, prompts: Sequence[str]) -> list[str]:
    """The replies of a finished generation stage, in prompt order (prompt hashes checked)."""
    from lmfuse.errors import CorruptFileError

    if not store.stage_done(out_dir):
        raise InputError(f"{str(out_dir)!r} is not finished; run the 'generate' stage first")
    manifest = store.read_json(out_dir / "manifest.json")
    replies: list[str] = []
    for s in range(manifest["num_shards"]):
        shard = store.read_json(shard_file(out_dir, s))
        replies.extend(shard["response"])
        for key, h in zip(shard["key"], shard["prompt_hash"], strict=True):
            if key >= len(prompts) or store.text_hash(prompts[key]) != h:
                raise CorruptFileError(f"{str(out_dir)!r}: prompt {key} changed since generation")
    if len(replies) != len(prompts):
        raise CorruptFileError(f"{str(out_dir)!r} holds {len(replies)} replies for {len(prompts)} prompts")
    return replies
