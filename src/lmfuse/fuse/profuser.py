"""ProFuser, top to bottom (``profuser``), and its own pieces between the shared stages: the generate and
reward stages, the views, and the paired training examples. Layout under ``output_dir``::

    generate/<candidate>/         each candidate's reply to every prompt (its own chat template)
    reward/                       every reward's scores, the votes and the winner of each example
    train-mode/{extract,align,combine}/          the reference responses; MinCE teacher (FuseLLM)
    infer-mode/<winner>/{extract,align,combine}/ the replies <winner> won; its own top-k as teacher
    summary.json                  teacher wins per candidate in each mode, mean reward scores, lengths
    train/model/                  trained on (inference-mode row, training-mode row) pairs

Extraction, alignment and fusion run per view (``fuse/stages.py``) with the unchanged FuseLLM stage
functions; in the ProFuser views a row is a response and each member reads its own rendered prompt first
(``fuse/instruct.py``).

Per example (prompt x, reference y) and candidate c (the target when ``combine.include_target``, then
the sources):

* **inference mode** — c's generated reply ŷ_c (``fuse/replies.py``) is scored by every reward; the
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

from lmfuse.errors import CorruptFileError, InputError
from lmfuse.fuse import stages, store
from lmfuse.fuse.extract import corpus_fingerprint
from lmfuse.fuse.instruct import Example
from lmfuse.fuse.pipeline import TRAINING_METHODS, Run, TrainingMethod
from lmfuse.fuse.recipe import MemberSpec, ProFuserRecipe
from lmfuse.fuse.rewards import VOTES, Reward, RewardSpec, build_rewards
from lmfuse.fuse.sharded import sharded_stage
from lmfuse.fuse.stages import View
from lmfuse.fuse.train import FusedRow

STAGES = ("generate", "reward", "extract", "align", "combine", "train")


def profuser(run: Run[ProFuserRecipe]) -> Path:
    """Run the selected stages (``run.stage`` says which, on which process); returns the trained model's path."""
    if run.stage("generate", every_process=True):
        generate(run)
    if run.stage("reward"):
        reward(run)
    if run.stage("extract", every_process=True):
        stages.extract(run, views(run))
    if run.stage("align"):
        stages.align(run, views(run))
    if run.stage("combine"):
        stages.combine(run, views(run))
        store.write_json(run.path("summary.json"), mode_summary(run.path("reward"), run.path("train-mode", "combine"),
                                                                [s.slug for s in run.recipe.candidates]))
    if run.stage("train", every_process=True):
        train(run)
    return run.path("train", "model")


def generate(run: Run[ProFuserRecipe]) -> None:
    """Every candidate answers every prompt; this process takes its share of the shards."""
    from lmfuse.fuse.replies import generate_member

    processes, index = run.split
    for spec in run.recipe.candidates:
        out = run.path("generate", spec.slug)
        if store.stage_done(out):
            continue
        generate_member(run.member(spec), run.prompts(spec), out, run.recipe.generate,
                        templated=run.template(spec) is not None, num_shards=processes, shard_index=index,
                        progress=run.progress)


def replies(run: Run[ProFuserRecipe]) -> dict[str, list[str]]:
    """Each candidate's replies (candidate order = the vote's tie-break order)."""
    from lmfuse.fuse.replies import read_generations

    out = {}
    for spec in run.recipe.candidates:
        directory = run.path("generate", spec.slug)
        stages.require(directory, "generate")
        out[spec.slug] = read_generations(directory, run.prompts(spec))
    return out


def reward(run: Run[ProFuserRecipe]) -> None:
    out = run.path("reward")
    if not store.stage_done(out):
        judge(run.examples, replies(run), out, run.recipe.rewards, run.recipe.generate.rows_per_shard,
              progress=run.progress, rule=run.recipe.vote)


def winner_keys(run: Run[ProFuserRecipe]) -> dict[MemberSpec, list[int]]:
    """The examples each candidate won whose reply is not empty (candidates that won none are left out)."""
    stages.require(run.path("reward"), "reward")
    winners = read_winners(run.path("reward"), num_examples=len(run.examples))
    texts = replies(run)
    keys = {spec: [i for i, w in enumerate(winners) if w == spec.slug and texts[spec.slug][i].strip()]
            for spec in run.recipe.candidates}
    return {spec: k for spec, k in keys.items() if k}


def views(run: Run[ProFuserRecipe]) -> list[View]:
    """The training-mode view (the references, every candidate), then one inference-mode view per winner."""
    recipe = run.recipe
    members = recipe.members
    out = [View(run.path("train-mode"), [e.response for e in run.examples], members, recipe.candidates,
                {m.slug: run.prompts(m) for m in members})]
    texts = replies(run)
    for spec, keys in winner_keys(run).items():
        readers = [recipe.target] if spec.slug == recipe.target.slug else [recipe.target, spec]
        out.append(View(run.path("infer-mode", spec.slug), [texts[spec.slug][i] for i in keys], readers, [spec],
                        {m.slug: [run.prompts(m)[i] for i in keys] for m in readers}, keys))
    return out


def train(run: Run[ProFuserRecipe]) -> None:
    """Pairs (inference-mode row, training-mode row) per example, weighted by the recipe's schedule."""
    from lmfuse.fuse.instruct import end_of_turn_id
    from lmfuse.fuse.schedule import mode_weights
    from lmfuse.fuse.train import load_fused_by_key
    from lmfuse.fuse.train import train as train_target

    if run.trained():
        return
    target = run.recipe.target
    stages.require(run.path("train-mode", "combine"), "combine")
    train_rows = load_fused_by_key(run.path("train-mode", "combine"))
    infer_rows: dict[int, FusedRow] = {}
    for spec, keys in winner_keys(run).items():
        directory = run.path("infer-mode", spec.slug, "combine")
        stages.require(directory, "combine")
        for r, row in load_fused_by_key(directory).items():
            infer_rows[keys[r]] = row
    member = run.target_only()
    end = end_of_turn_id(member.tokenizer, run.template(target) is not None)
    contexts = [np.asarray(member.encode(p).ids, dtype=np.int64) for p in run.prompts(target)]
    examples = [(with_turn(infer_rows.get(i), contexts[i], end), with_turn(train_rows[i], contexts[i], end))
                for i in range(len(run.examples))]
    train_target(member, examples, run.path("train"), run.recipe.train, progress=run.progress,
                 modes=("infer", "train"), weights=mode_weights(run.recipe.schedule))


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
    total = math.ceil(len(examples) / rows_per_shard)
    built: list[Reward] = []

    def make_shard(s: int, path: Path) -> None:
        if not built:  # built once, and only when a shard is missing
            built.extend(build_rewards(specs))
        lo = s * rows_per_shard
        chunk = examples[lo : lo + rows_per_shard]
        prompts, refs = [e.prompt for e in chunk], [e.response for e in chunk]
        scores = np.zeros((len(built), len(chunk), len(names)))  # [R, N, C]
        for r, fn in enumerate(built):
            for c, name in enumerate(names):
                scores[r, :, c] = fn(prompts, replies[name][lo : lo + len(chunk)], refs)
        empty = np.array([[not replies[n][lo + i].strip() for n in names] for i in range(len(chunk))])
        scores[:, empty] = np.nan
        votes = [vote(scores[:, i, :]) for i in range(len(chunk))]
        store.write_json(path, {
            "key": list(range(lo, lo + len(chunk))), "winner": [names[v.winner] for v in votes],
            "votes": [v.votes.tolist() for v in votes], "mean_z": [_json_floats(v.mean_z) for v in votes],
            "scores": [[_json_floats(per_reward) for per_reward in per_example]
                       for per_example in scores.transpose(1, 0, 2)]})  # [N][R][C]

    sharded_stage(out_dir, config, total, make_shard, shard_file=shard_file, desc="reward", progress=progress,
                  manifest=lambda: summarise(out_dir, examples, replies, specs, total))
    return out_dir


def summarise(out_dir: Path, examples: Sequence[Example], replies: dict[str, list[str]],
              specs: Sequence[RewardSpec], total: int) -> dict[str, object]:
    """The reward manifest's summary: wins per candidate, mean scores, mean lengths of winners and references."""
    names = list(replies)
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
    return summary


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


TRAINING_METHODS.register("profuser")(TrainingMethod(STAGES, profuser))
