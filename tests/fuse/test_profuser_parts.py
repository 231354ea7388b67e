"""ProFuser's pure parts: the progressive schedules, the reward registry and the vote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmfuse.errors import InputError
from lmfuse.fuse.rewards import (
    REWARDS,
    VOTES,
    RewardSpec,
    borda,
    build_rewards,
    final_answer,
    mean_z_vote,
    vote,
)
from lmfuse.fuse.schedule import SCHEDULES, ScheduleConfig, mode_weights
from lmfuse.registry import UnknownNameError

CFG = ScheduleConfig(switch=0.5, late_weight=0.1)


def _weights(name: str, total: int = 10, cfg: ScheduleConfig = CFG) -> list[tuple[float, float]]:
    fn = mode_weights(ScheduleConfig(name, cfg.switch, cfg.late_weight))
    return [fn(step, total) for step in range(total)]


def test_two_stage_is_inference_then_training_with_the_papers_weights() -> None:
    assert _weights("two-stage") == [(1.0, 0.0)] * 5 + [(0.1, 1.0)] * 5
    assert _weights("two-stage", cfg=ScheduleConfig(switch=0.2)) == [(1.0, 0.0)] * 2 + [(0.1, 1.0)] * 8
    assert _weights("two-stage", cfg=ScheduleConfig(switch=0.0)) == [(0.1, 1.0)] * 10


def test_ablation_orders_and_single_modes() -> None:
    assert _weights("reverse") == [(0.0, 1.0)] * 5 + [(1.0, 0.1)] * 5
    assert _weights("simul") == [(1.0, 1.0)] * 10
    assert _weights("train-only") == [(0.0, 1.0)] * 10
    assert _weights("infer-only") == [(1.0, 0.0)] * 10


def test_linear_ramps_between_the_two_stage_end_points() -> None:
    w = np.array(_weights("linear", total=5))
    np.testing.assert_allclose(w[0], (1.0, 0.0))
    np.testing.assert_allclose(w[-1], (0.1, 1.0))
    assert np.all(np.diff(w[:, 0]) < 0) and np.all(np.diff(w[:, 1]) > 0)
    np.testing.assert_allclose(w[2], (0.55, 0.5))
    assert mode_weights(ScheduleConfig("linear"))(0, 1) == (1.0, 0.0)  # one step: no division by zero


def test_unknown_schedule_suggests() -> None:
    assert set(SCHEDULES.names()) >= {"two-stage", "linear", "simul", "reverse"}
    with pytest.raises(UnknownNameError, match="Did you mean 'two-stage'"):
        mode_weights(ScheduleConfig("two_stage"))
    with pytest.raises(InputError, match="switch"):
        ScheduleConfig(switch=1.5)


@pytest.mark.parametrize(("text", "answer"), [
    ("16 - 3 - 4 = 9 eggs.\n9 * 2 = $18.\n#### 18", "18"),
    ("#### 1,800.00", "1800"),
    ("So she makes $18.", "18"),
    ("first 3, then -2.5", "-2.5"),
    ("#### seven", "seven"),
    ("no number here", None),
])
def test_final_answer(text: str, answer: str | None) -> None:
    assert final_answer(text) == answer


def test_exact_match_and_chrf_score_against_the_reference() -> None:
    em, chrf = build_rewards([RewardSpec("exact-match"), RewardSpec("chrf")])
    refs = ["She makes 9 * 2 = $18.\n#### 18"] * 3
    replies = ["The answer is 18", "She makes 9 * 2 = $18 in total, so 20", ""]
    np.testing.assert_array_equal(em(["q"] * 3, replies, refs), [1.0, 0.0, 0.0])
    scores = chrf(["q"] * 3, replies, refs)
    assert scores[1] > scores[0] > scores[2] == 0.0 and scores.max() <= 1.0
    assert chrf(["q"], refs[:1], refs[:1])[0] == pytest.approx(1.0)


def test_unknown_reward_suggests_and_reward_model_needs_a_path() -> None:
    assert set(REWARDS.names()) >= {"exact-match", "chrf", "reward-model"}
    with pytest.raises(UnknownNameError, match="Did you mean 'exact-match'"):
        RewardSpec("exact_match")
    with pytest.raises(InputError, match="needs `model:`"):
        RewardSpec("reward-model")
    with pytest.raises(InputError, match=r"no config\.json"):
        build_rewards([RewardSpec("reward-model", model="/nonexistent")])


def test_reward_model_scores_pairs_with_any_sequence_classifier(tmp_path: Path, tokenizers3: dict) -> None:  # type: ignore[type-arg]
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tokenizers3["bytebpe"]
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    (rm,) = build_rewards([RewardSpec("reward-model", model=str(tmp_path / "rm"), batch_size=2)])
    prompts, replies = ["2+3?", "2+3?", "10-4?"], ["5", "It is five, clearly.", "6"]
    got = rm(prompts, replies, ["", "", ""])
    assert got.shape == (3,) and np.isfinite(got).all() and len(set(got.tolist())) == 3
    # Each score is the classifier's logit for the (prompt, reply) pair alone, whatever the batch.
    model.eval()
    for p, r, g in zip(prompts, replies, got, strict=True):
        with torch.no_grad():
            want = model(**tok(p, r, return_tensors="pt")).logits[0, 0].item()
        assert g == pytest.approx(want, abs=1e-4)


def test_vote_majority_wins() -> None:
    # Rewards 0 and 1 prefer candidate 2, reward 2 prefers candidate 0.
    v = vote(np.array([[0.1, 0.2, 0.9], [0.3, 0.1, 0.5], [0.9, 0.2, 0.1]]))
    assert v.winner == 2 and v.votes.tolist() == [1.0, 0.0, 2.0]


def test_vote_tie_is_broken_by_mean_z_score_then_by_order() -> None:
    # One vote each for candidates 0 and 1: candidate 1 is far ahead under reward 1, so its mean z is higher.
    v = vote(np.array([[0.6, 0.5, 0.0], [0.4, 1.0, 0.0]]))
    assert v.votes.tolist() == [1.0, 1.0, 0.0]
    assert v.mean_z[1] > v.mean_z[0] and v.winner == 1
    # Identical scores everywhere: votes and z tie, the fixed order (target first) decides.
    v = vote(np.array([[0.3, 0.3], [1.0, 1.0]]))
    assert v.votes.tolist() == [1.0, 1.0] and v.mean_z.tolist() == [0.0, 0.0] and v.winner == 0


def test_vote_shares_a_rewards_vote_among_its_tied_best() -> None:
    # Exact match: candidates 1 and 2 both right (half a vote each); chrF prefers 2.
    v = vote(np.array([[0.0, 1.0, 1.0], [0.2, 0.4, 0.5]]))
    assert v.votes.tolist() == [0.0, 0.5, 1.5] and v.winner == 2
    # Every candidate collects two half votes: a three-way tie in votes and in z; the order decides.
    v = vote(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    assert v.votes.tolist() == [1.0, 1.0, 1.0] and v.mean_z == pytest.approx([0.0, 0.0, 0.0]) and v.winner == 0


def test_a_nan_score_never_wins() -> None:
    v = vote(np.array([[np.nan, 0.1], [np.nan, 0.0]]))
    assert v.winner == 1


def test_borda_and_mean_z_rules() -> None:
    assert set(VOTES.names()) == {"majority", "borda", "mean-z"}
    # Majority: two rewards prefer candidate 0 by a hair; the third ranks candidate 0 last.
    s = np.array([[0.50, 0.49, 0.0], [0.50, 0.49, 0.0], [0.0, 0.9, 1.0]])
    assert vote(s).winner == 0
    # Borda: points 2+2+0 = 4 for candidate 0, 1+1+1 = 3 for 1, 0+0+2 = 2 for 2 -> 0 again; ties share places.
    assert borda(s).votes.tolist() == [4.0, 3.0, 2.0] and borda(s).winner == 0
    assert borda(np.array([[1.0, 1.0, 0.0]])).votes.tolist() == [1.5, 1.5, 0.0]
    # Mean z: candidate 1 is never far behind, so its mean z-score is the highest.
    v = mean_z_vote(s)
    assert v.winner == 1 and v.votes.tolist() == v.mean_z.tolist()
    assert borda(np.array([[np.nan, 0.0], [np.nan, 0.0]])).winner == 1
    with pytest.raises(UnknownNameError, match="Did you mean 'borda'"):
        VOTES.get("bord")
