"""ProFuser's own pieces between the shared stages: the reward stage and the paired training examples.

Per example (prompt x, reference y) and candidate c (the target when ``combine.include_target``, then
the sources):

* **inference mode** — c's generated reply ŷ_c (``fuse/generate.py``) is scored by every reward; the
  vote (``rewards.vote``) picks the winner B. The inference-mode row is ŷ_B in the target's tokens,
  its teacher B's own top-k along ŷ_B (B re-reads prompt + ŷ_B teacher-forced: the FuseLLM extraction),
  aligned to the target's vocabulary. Decoded replies are re-encoded, so B's tokens can differ from
  the ids it sampled (non-canonical tokenizations), as in the reference's re-tokenisation of ŷ_B.
* **training mode** — FuseLLM's MinCE on y: every candidate's CE of the reference response given its
  own rendered prompt (per UTF-8 byte by default, ``combine.ce_norm``), the lowest one's aligned top-k
  is the teacher (``combine.function: min-ce``, sequence granularity).

The reward stage writes one JSON shard per ``generate.rows_per_shard`` examples (atomic, resumable) with
every score, the votes and the winner; its manifest records how often each candidate won and the mean
length of the winning replies and of the references (the paper's easy-to-hard premise: replies are
shorter than references). An empty reply scores NaN under every reward, so it never wins while another
candidate has a reply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmfuse.errors import CorruptFileError, InputError
from lmfuse.fuse import store
from lmfuse.fuse.extract import corpus_fingerprint
from lmfuse.fuse.instruct import Example
from lmfuse.fuse.recipe import RewardSpec
from lmfuse.fuse.rewards import VOTES, build_rewards
from lmfuse.fuse.train import FusedRow


def shard_file(directory: Path, index: int) -> Path:
    return directory / f"shard-{index:05d}.json"


def judge(examples: Sequence[Example], replies: dict[str, list[str]], out_dir: Path, specs: Sequence[RewardSpec],
          rows_per_shard: int = 64, progress: bool = True, rule: str = "majority") -> Path:
    """Score every candidate's replies with every reward and vote per example (resumable). Returns ``out_dir``.

    ``rule``: the vote rule (``rewards.VOTES``).
    ``replies``: candidate name -> one reply per example, in the fixed tie-break order.
    """
    names = list(replies)
    vote = VOTES.get(rule)
    if any(len(r) != len(examples) for r in replies.values()):
        raise InputError(f"every candidate needs one reply per example ({len(examples)})")
    config = {"stage": "reward", "candidates": names, "rewards": [asdict(s) for s in specs], "vote": rule,
              "examples": corpus_fingerprint([e.prompt + "\x00" + e.response for e in examples]),
              "replies": {n: corpus_fingerprint(r) for n, r in replies.items()}, "rows_per_shard": rows_per_shard,
              "format": 1}
    store.check_config(out_dir, config)
    total = math.ceil(len(examples) / rows_per_shard)
    todo = [s for s in range(total) if not shard_file(out_dir, s).is_file()]
    rewards = build_rewards(specs) if todo else []
    for s in tqdm(todo, desc="reward", unit="shard", disable=not progress):
        lo = s * rows_per_shard
        chunk = examples[lo : lo + rows_per_shard]
        prompts, refs = [e.prompt for e in chunk], [e.response for e in chunk]
        scores = np.zeros((len(rewards), len(chunk), len(names)))  # [R, N, C]
        for r, fn in enumerate(rewards):
            for c, name in enumerate(names):
                scores[r, :, c] = fn(prompts, replies[name][lo : lo + len(chunk)], refs)
        empty = np.array([[not replies[n][lo + i].strip() for n in names] for i in range(len(chunk))])
        scores[:, empty] = np.nan
        votes = [vote(scores[:, i, :]) for i in range(len(chunk))]
        store.write_json(shard_file(out_dir, s), {
            "key": list(range(lo, lo + len(chunk))), "winner": [names[v.winner] for v in votes],
            "votes": [v.votes.tolist() for v in votes], "mean_z": [_json_floats(v.mean_z) for v in votes],
            "scores": [[_json_floats(per_reward) for per_reward in per_example]
                       for per_example in scores.transpose(1, 0, 2)]})  # [N][R][C]
    winners = read_winners(out_dir, total, len(examples))
    won = [replies[w][i] for i, w in enumerate(winners)]
    shards = [store.read_json(shard_file(out_dir, s)) for s in range(total)]
    all_scores = np.array([[[np.nan if x is None else x for x in per_reward] for per_reward in per_example]
                           for shard in shards for per_example in shard["scores"]], dtype=np.float64)  # [N, R, C]
    summary = {"wins": {n: winners.count(n) for n in names},
               "mean_scores": {spec.name: {n: _nanmean(all_scores[:, r, c]) for c, n in enumerate(names)}
                               for r, spec in enumerate(specs)},
               "mean_chars": {"winner": float(np.mean([len(x) for x in won])) if won else 0.0,
                              "reference": float(np.mean([len(e.response) for e in examples])) if examples else 0.0}}
    store.write_json(out_dir / "manifest.json", {**config, **summary, "num_shards": total, "complete": True})
    return out_dir


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def mode_summary(reward_dir: Path, train_combine_dir: Path, candidates: Sequence[str]) -> dict[str, object]:
    """How often each candidate supplies the teacher in each mode (the paper's 68 % vs 45 % statistic)."""
    manifest = store.read_json(reward_dir / "manifest.json")
    train_wins = dict.fromkeys(candidates, 0)
    combined = store.read_json(train_combine_dir / "manifest.json")
    for s in range(combined["num_shards"]):
        weights = store.read_shard(store.shard_path(train_combine_dir, s)).rows["weights"]  # [N, M]
        for m in weights.argmax(axis=1).tolist():
            train_wins[candidates[m]] += 1
    def share(wins: dict[str, int]) -> dict[str, float]:
        return {k: v / max(sum(wins.values()), 1) for k, v in wins.items()}

    return {"inference_mode": {"wins": manifest["wins"], "share": share(manifest["wins"]),
                               "mean_scores": manifest["mean_scores"]},
            "training_mode": {"wins": train_wins, "share": share(train_wins), "function": combined["function"]},
            "mean_chars": manifest["mean_chars"]}


def _json_floats(values: np.ndarray) -> list[float | None]:
    """Strict JSON: a non-finite score (an empty reply's) is written as null."""
    return [float(x) if np.isfinite(x) else None for x in values]


def read_winners(out_dir: Path, num_shards: int | None = None, num_examples: int | None = None) -> list[str]:
    """The winning candidate's name for every example, in order."""
    if num_shards is None:
        if not store.stage_done(out_dir):
            raise InputError(f"{str(out_dir)!r} is not finished; run the 'reward' stage first")
        num_shards = int(store.read_json(out_dir / "manifest.json")["num_shards"])
    winners: list[str] = []
    for s in range(num_shards):
        winners.extend(store.read_json(shard_file(out_dir, s))["winner"])
    if num_examples is not None and len(winners) != num_examples:
        raise CorruptFileError(f"{str(out_dir)!r} holds {len(winners)} winners for {num_examples} examples")
    return winners


def with_turn(row: FusedRow | None, context: np.ndarray, end_id: int | None) -> FusedRow:
    """A response row read after ``context`` (the target's prompt ids), closed by the end-of-turn token.

    The end-of-turn position has no teacher (-1 ids): it is trained by the CLM term only. A missing row
    (an example with no usable reply) is the end-of-turn token alone.
    """
    if row is None:
        row = FusedRow(np.zeros(0, np.int64), np.full((0, 1), -1, np.int64), np.full((0, 1), -np.inf, np.float32))
    if end_id is None:
        return FusedRow(row.ids, row.topk_ids, row.topk_logp, context)
    k = row.topk_ids.shape[1]
    return FusedRow(np.append(row.ids, end_id).astype(np.int64),
                    np.concatenate([row.topk_ids, np.full((1, k), -1, np.int64)]),
                    np.concatenate([row.topk_logp, np.full((1, k), -np.inf, np.float32)]), context)
