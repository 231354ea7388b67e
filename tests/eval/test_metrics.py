"""Evaluation maths against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmfuse.eval import metrics


def test_bits_per_byte_known_value() -> None:
    # p = 2**-8 per byte of an 4-byte text: exactly 8 bits per byte
    assert metrics.bits_per_byte(4 * -8 * math.log(2), 4) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        metrics.bits_per_byte(-1.0, 0)


def test_byte_normalised_uses_utf8_bytes_not_characters() -> None:
    # "é" is 2 UTF-8 bytes; "ab" is 2 bytes; "🙂" is 4
    assert metrics.byte_normalised([-4.0, -4.0, -4.0], ["é", "ab", "🙂"]) == [-2.0, -2.0, -1.0]


def test_acc_and_acc_norm_can_disagree() -> None:
    scores, options = [-3.0, -5.0], [" a", " longer answer"]
    assert metrics.predict(scores) == 0
    assert metrics.predict(metrics.byte_normalised(scores, options)) == 1
    assert metrics.is_correct(scores, (0,)) and not metrics.is_correct(scores, (1,))


def test_predict_takes_first_on_ties() -> None:
    assert metrics.predict([-1.0, -1.0, -2.0]) == 0


def test_chance_level_counts_options_and_correct_targets() -> None:
    # 2-way, 4-way, and 4-way with two right answers
    assert metrics.chance_level([(2, 1), (4, 1), (4, 2)]) == pytest.approx((0.5 + 0.25 + 0.5) / 3)


def test_wilson_interval_known_values() -> None:
    lo, hi = metrics.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = metrics.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = metrics.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)


def test_wilson_interval_shrinks_with_n() -> None:
    small = metrics.wilson_interval(6, 10)
    big = metrics.wilson_interval(600, 1000)
    assert big[1] - big[0] < small[1] - small[0]
    assert small[0] < 0.6 < small[1]


def test_bootstrap_ratio_interval_brackets_the_ratio_and_is_seeded() -> None:
    bits = [10.0, 30.0, 20.0, 25.0, 15.0]
    nbytes = [10.0, 20.0, 20.0, 20.0, 10.0]
    lo, hi = metrics.bootstrap_ratio_interval(bits, nbytes, seed=1)
    assert lo <= sum(bits) / sum(nbytes) <= hi
    assert (lo, hi) == metrics.bootstrap_ratio_interval(bits, nbytes, seed=1)
    same = metrics.bootstrap_ratio_interval([2.0] * 5, [1.0] * 5)
    assert same == (2.0, 2.0)


def test_paired_bootstrap_diff_detects_a_real_gap_only() -> None:
    a = [1.0] * 80 + [0.0] * 20
    mean, lo, hi = metrics.paired_bootstrap_diff(a, [0.0] * 100)
    assert mean == pytest.approx(0.8) and lo > 0
    mean, lo, hi = metrics.paired_bootstrap_diff(a, a)
    assert mean == 0 and lo == 0 and hi == 0


def test_paired_bootstrap_ratio_diff_is_the_bpb_gap_and_sees_a_consistent_one() -> None:
    # Model a is 0.1 bits per byte better on every chunk, while the chunks themselves vary a lot: the paired
    # interval is tight around -0.1 although each model's own interval is wide.
    rng = np.random.default_rng(0)
    nbytes = rng.integers(500, 2000, size=40).astype(float)
    bits_b = nbytes * rng.uniform(0.5, 1.5, size=40)
    bits_a = bits_b - 0.1 * nbytes
    gap, lo, hi = metrics.paired_bootstrap_ratio_diff(bits_a, bits_b, nbytes)
    assert gap == pytest.approx(sum(bits_a) / sum(nbytes) - sum(bits_b) / sum(nbytes))
    assert gap == pytest.approx(-0.1) and lo == pytest.approx(-0.1) and hi == pytest.approx(-0.1)
    own_lo, own_hi = metrics.bootstrap_ratio_interval(bits_b, nbytes)
    assert own_hi - own_lo > 0.1
    noisy = bits_b + rng.normal(0, 50, size=40)  # no systematic gap: the interval holds 0
    _, lo, hi = metrics.paired_bootstrap_ratio_diff(noisy, bits_b, nbytes)
    assert lo < 0 < hi


def test_sample_indices_fixed_seed_subset() -> None:
    first = metrics.sample_indices(100, 10, seed=3)
    assert first == metrics.sample_indices(100, 10, seed=3)
    assert first != metrics.sample_indices(100, 10, seed=4)
    assert len(set(first)) == 10 and first == sorted(first) and all(0 <= i < 100 for i in first)
    assert metrics.sample_indices(5, 10, seed=0) == [0, 1, 2, 3, 4]
    assert metrics.sample_indices(5, None, seed=0) == [0, 1, 2, 3, 4]


def test_shot_indices_never_use_the_query_and_do_not_depend_on_the_limit() -> None:
    pool = list(range(20))
    shots = metrics.shot_indices(pool, 7, 3, seed=0)
    assert len(shots) == 3 and 7 not in shots
    assert shots == metrics.shot_indices(pool, 7, 3, seed=0)
    assert metrics.shot_indices(pool, 7, 0, seed=0) == []
    with pytest.raises(ValueError):
        metrics.shot_indices([1, 2], 1, 2, seed=0)


def test_kshot_context_layout() -> None:
    ctx, answers = metrics.kshot_context("Answer.\n", [("Q: a\nA:", " x"), ("Q: b\nA:", " yes")], "Q: c\nA: ", "\n\n")
    assert ctx == "Answer.\nQ: a\nA: x\n\nQ: b\nA: yes\n\nQ: c\nA: "
    assert [ctx[a:b] for a, b in answers] == [" x", " yes"]
    assert metrics.kshot_context("", [], "Q: c\nA:", "\n") == ("Q: c\nA:", [])
