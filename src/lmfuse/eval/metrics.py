"""Evaluation maths: pure functions on numbers and strings (no models, no I/O).

Everything here is comparable across tokenizers: text is measured in **bits per UTF-8 byte**, and
byte-normalised multiple-choice scores divide by the UTF-8 length of the option, never by its
token count (a token is a different unit in every member).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

LN2 = math.log(2.0)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def bits_per_byte(logprob_nats: float, n_bytes: int) -> float:
    """``-log2 p(text) / bytes``: total natural-log probability -> bits per UTF-8 byte."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {n_bytes}")
    return -logprob_nats / (n_bytes * LN2)


def predict(scores: Sequence[float]) -> int:
    """Index of the best option (the first one on ties, so a result never depends on luck)."""
    return int(np.argmax(np.asarray(scores, dtype=np.float64)))


def byte_normalised(scores: Sequence[float], options: Sequence[str]) -> list[float]:
    """``acc_norm`` scores: each option's log-prob divided by its UTF-8 length."""
    return [s / max(utf8_len(o), 1) for s, o in zip(scores, options, strict=True)]


def is_correct(scores: Sequence[float], correct: Sequence[int]) -> bool:
    return predict(scores) in correct


def chance_of_example(n_options: int, n_correct: int) -> float:
    """Expected accuracy of a uniform random guess on one example."""
    return n_correct / n_options


def chance_level(examples: Sequence[tuple[int, int]]) -> float:
    """Expected accuracy of random guessing over a task: mean of ``n_correct / n_options``."""
    if not examples:
        raise ValueError("chance level of an empty task")
    return float(np.mean([chance_of_example(n, k) for n, k in examples]))


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); sane at 0 and n."""
    if n <= 0:
        raise ValueError("interval of zero trials")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ratio_interval(
    numerators: Sequence[float], denominators: Sequence[float], n_boot: int = 2000, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(num) / sum(den)`` resampling the paired items.

    Used for bits per byte over text chunks (num = bits, den = bytes): a ratio of sums, not a mean
    of per-chunk ratios, so long chunks weigh by their length.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.size == 0:
        raise ValueError(f"bootstrap needs equal, non-empty arrays; got {num.shape} and {den.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(n_boot, num.size))
    ratios = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired items (e.g. per-example correctness of two systems) and its
    percentile bootstrap interval. An interval that excludes 0 is a difference the data supports."""
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if x.size == 0:
        raise ValueError("paired difference of empty arrays")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi)


def paired_bootstrap_ratio_diff(
    num_a: Sequence[float], num_b: Sequence[float], denominators: Sequence[float], n_boot: int = 2000,
    seed: int = 0, level: float = 0.95,
) -> tuple[float, float, float]:
    """``(sum(num_a) - sum(num_b)) / sum(den)`` over paired items and its percentile bootstrap interval.

    Two models' bits per byte on the same text chunks (num = bits of each model, den = the chunks' bytes):
    the difference of the two ratios of sums, every resample taking the same chunks for both models.
    """
    diff = np.asarray(num_a, dtype=np.float64) - np.asarray(num_b, dtype=np.float64)
    # Resampling the chunks' differences resamples the same chunks for a and b.
    lo, hi = bootstrap_ratio_interval(diff.tolist(), denominators, n_boot, seed, level)
    return float(diff.sum() / np.sum(denominators, dtype=np.float64)), lo, hi


def sample_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """The examples ``--limit`` evaluates: all of them, or ``limit`` drawn without replacement
    with a fixed seed (sorted, so reports list them in file order)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    return sorted(random.Random(seed).sample(range(n), limit))


def shot_indices(pool: Sequence[int], query: int, k: int, seed: int) -> list[int]:
    """``k`` demonstrations for example ``query`` from ``pool`` (never the query itself).

    Seeded per query, so an example's shots do not change with ``--limit`` or evaluation order.
    """
    if k <= 0:
        return []
    candidates = [i for i in pool if i != query]
    if len(candidates) < k:
        raise ValueError(f"{k}-shot needs {k} other examples, the pool has {len(candidates)}")
    return random.Random(f"{seed}:{query}").sample(candidates, k)


def kshot_context(task_prefix: str, demos: Sequence[tuple[str, str]], query: str,
                  separator: str) -> tuple[str, list[tuple[int, int]]]:
    """The prompt for one example: the task instructions once, the solved demonstrations (each a query and
    its correct answer), the query; and the character span of each demonstration's answer in it (what
    ``demo-fit`` fits the members' weights on)."""
    parts, answers, at = [task_prefix], [], len(task_prefix)
    for demo_query, answer in demos:
        start = at + len(demo_query)
        answers.append((start, start + len(answer)))
        parts.append(demo_query + answer + separator)
        at = start + len(answer) + len(separator)
    return "".join(parts) + query, answers
