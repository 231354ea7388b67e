"""Several examples per forward pass give the scores of one example at a time (within 1e-4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfuse.ensemble import Pack
from lmfuse.eval.member_scorer import MemberScorer
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.eval.runner import evaluate
from lmfuse.models.member import Member

from .helpers import bigbench_tree

# Contexts of mixed lengths (one ends in a space that moves to the options, one in a newline), options of
# one and of several tokens, and a question with a single option.
REQUESTS = [
    ("The capital of France is", [" Paris", " Rome", " a city in Europe"]),
    ("Q: 2 + 2 =\nA: ", ["4", "5", "22"]),
    ("def add(a, b):\n", ["    return a + b", "    pass"]),
    ("Le petit café au coin de la rue était", [" fermé", " ouvert"]),
    ("x", [" y"]),
    ("日本語の文章", ["です", "だ。"]),
]


def test_member_scorer_batches_equal_one_by_one(toy_members: dict[str, Member]) -> None:
    for member in toy_members.values():
        scorer = MemberScorer(member)
        together = scorer.loglikelihood_many(REQUESTS)
        for (context, options), got in zip(REQUESTS, together, strict=True):
            assert got[member.name] == pytest.approx(scorer.loglikelihood(context, options)[member.name], abs=1e-4)


def test_pack_scorer_batches_equal_one_by_one(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]])
    for parallel in (True, False):
        pack.reconfigure(parallel=parallel)
        scorer = pack_scorer(pack, ["packllm-opt", "uniform"])
        together = scorer.loglikelihood_many(REQUESTS)
        weights = scorer.batch_weights()
        assert len(weights) == len(REQUESTS)
        for (context, options), got, w in zip(REQUESTS, together, weights, strict=True):
            want = scorer.loglikelihood(context, options)
            assert set(got) == set(want)
            for system in want:
                assert got[system] == pytest.approx(want[system], abs=1e-4), system
            assert w["pack[packllm-opt]"] == pytest.approx(scorer.last_weights()["pack[packllm-opt]"], abs=1e-6)


def test_evaluation_results_do_not_depend_on_the_batch_size(tmp_path: Path, toy_members: dict[str, Member]) -> None:
    root = bigbench_tree(tmp_path / "bb")
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]])
    runs = [evaluate(pack_scorer(pack, ["packllm-opt"]), ["bigbench:parity", "bigbench:custom"], shots=1,
                     bigbench_root=root, batch_size=b) for b in (1, 5)]
    for a, b in zip(runs[0].tasks, runs[1].tasks, strict=True):
        assert a.per_example.keys() == b.per_example.keys()
        for system in a.per_example:
            for key, values in a.per_example[system].items():
                assert b.per_example[system][key] == pytest.approx(values, abs=1e-6), (system, key)
