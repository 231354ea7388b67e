"""`online`: weights that follow the text (a Bayesian mixture with a fixed share), causal by construction."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmfuse.ensemble import Pack, PackConfig
from lmfuse.ensemble.weighting import follow, updated
from lmfuse.errors import InputError
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.models.member import Member


def two_experts(t: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Member 0 predicts the first half's bytes well, member 1 the second half's."""
    targets = torch.randint(0, 256, (t,), generator=torch.Generator().manual_seed(0))
    good, bad = torch.full((t, 257), -9.0), torch.full((t, 257), -5.0)
    good[torch.arange(t), targets] = -0.05
    bad[torch.arange(t), targets] = -3.0
    half = t // 2
    m0 = torch.cat([good[:half], bad[half:]])
    m1 = torch.cat([bad[:half], good[half:]])
    return torch.stack([m0, m1]).log_softmax(-1), targets, torch.ones(2, t, dtype=torch.bool)


@pytest.mark.parametrize("fusion", ["product", "mixture"])
def test_a_member_that_becomes_better_takes_over(fusion: str) -> None:
    log_probs, targets, present = two_experts()
    w = follow(torch.tensor([1.0, 0.0]), log_probs, targets, present, 0.05, fusion)
    assert torch.allclose(w.sum(0), torch.ones(w.shape[1]), atol=1e-5)
    assert w[:, 0].tolist() == [1.0, 0.0]  # the first byte uses the start weights
    assert w[0, 99] > 0.8 and w[1, -1] > 0.8, w[:, [99, -1]]  # member 0 leads the first half, member 1 the second


def test_weights_at_a_position_depend_only_on_the_bytes_before_it() -> None:
    log_probs, targets, present = two_experts()
    start = torch.tensor([0.3, 0.7])
    w = follow(start, log_probs, targets, present, 0.05, "product")
    changed = targets.clone()
    changed[120:] = (changed[120:] + 1) % 256
    w2 = follow(start, log_probs, changed, present, 0.05, "product")
    assert torch.equal(w[:, :121], w2[:, :121]) and not torch.equal(w, w2)


def test_absent_members_keep_their_weight_and_bad_rates_are_named() -> None:
    rows = torch.tensor([[-0.1, -2.4], [-3.0, -0.05]]).double().numpy()  # member 1 is sure of outcome 1
    for fusion in ("product", "mixture"):
        w = updated(torch.tensor([0.5, 0.5]).double().numpy(), rows, 0, torch.tensor([True, False]).numpy(), 1e-6,
                    fusion)
        assert w[1] == pytest.approx(0.5, abs=1e-6)  # absent: out of the step
        w = updated(torch.tensor([0.5, 0.5]).double().numpy(), rows, 0, torch.tensor([True, True]).numpy(), 0.1,
                    fusion)
        assert w[0] > 0.5  # outcome 0 came: the member that gave it more weight gains
    log_probs, targets, present = two_experts(4)
    for rate in (0.0, 1.0, -0.1):
        with pytest.raises(InputError, match="online rate must be in"):
            follow(torch.tensor([0.5, 0.5]), log_probs, targets, present, rate, "product")
    with pytest.raises(InputError, match="online_rate"):
        PackConfig.of(online_rate=1.5)


def test_online_scores_a_first_byte_with_the_fitted_weights(toy_members: dict[str, Member]) -> None:
    """Before any byte of the continuation is seen, online's weights are packllm-opt's: a one-byte
    continuation gets the same fused score; longer ones differ once the weights have moved."""
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], weighting="online", online_rate=0.2)
    scorer = pack_scorer(pack, ["online", "packllm-opt"])
    first = scorer.loglikelihood("The quick brown fox jumps over the lazy dog", ["!", "."])
    assert first["pack[online]"] == pytest.approx(first["pack[packllm-opt]"], abs=1e-6)
    text = scorer.text_logprob(["Once upon a time there was a fox. " * 4], ["The quick brown fox. " * 4])
    assert all(v[0] < 0 for v in text.values())


def test_online_generation_of_identical_members_is_the_member_alone(toy_members: dict[str, Member]) -> None:
    member = toy_members["sentencepiece"]
    twin = dataclasses.replace(member, name="twin")
    fused = Pack([member, twin], weighting="online", online_rate=0.3).generate(["Once upon a time"], max_new_tokens=8)
    alone = Pack([member]).generate(["Once upon a time"], max_new_tokens=8)
    assert fused[0].text == alone[0].text
    mixed = Pack([toy_members["bytebpe"], member], weighting="online").generate(["Once upon a time"], max_new_tokens=8)
    assert mixed[0].n_tokens == 8


def test_the_weight_report_says_online_weights_are_where_the_text_starts(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], weighting="online")
    assert "starting weights" in str(pack.weights("Once upon a time"))
    assert "starting weights" not in str(pack.weights("Once upon a time", "packllm-opt"))
