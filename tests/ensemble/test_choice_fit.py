"""``choice-fit-task``: one set of weights per task, fitted on *choosing* the correct options of labelled
demonstrations among their options (discriminative), checked against evaluation's own option scores."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from lmfuse.ensemble import Pack
from lmfuse.ensemble.weighting import WeightOptions, WeightProblem, choice_loss, packllm_opt
from lmfuse.errors import InputError
from lmfuse.eval import metrics
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.eval.report import markdown
from lmfuse.eval.runner import evaluate
from lmfuse.eval.scorer import Demonstration
from lmfuse.eval.tasks import MCExample, MCTask
from lmfuse.models.member import Member

DEMOS = [
    Demonstration("Q: Which city is the capital of France?\nA:", (" Paris", " Lyon", " Zürich"), (0,)),
    Demonstration("Q: What is 2 + 3?\nA: ", ("five", "six"), (0,)),  # the context's space moves to the options
    Demonstration("Q: Où est Zürich ?\nA:", (" en France", " en Suisse — café"), (1,)),  # multi-byte characters
    Demonstration("Q: Name an even number.\nA:", (" two", " three", " four"), (0, 2)),  # two correct options
]


def choice_losses(results: Sequence[dict[str, list[float]]], system: str) -> float:
    """The choice objective from evaluation's scores of ``DEMOS``: per scoring (acc: summed; acc_norm: per
    byte of the option, as the runner normalises), ``-log`` of the softmax mass of the correct options; the
    mean of the two."""
    losses = []
    for normalise in (False, True):
        per_question = []
        for d, scores in zip(DEMOS, results, strict=True):
            s = metrics.byte_normalised(scores[system], d.options) if normalise else scores[system]
            per_question.append(math.log(sum(math.exp(x) for x in s)) - math.log(sum(math.exp(s[i]) for i in d.correct)))
        losses.append(sum(per_question) / len(per_question))
    return sum(losses) / 2


def loss_from_scores(members: Sequence[Member], weights: Sequence[float]) -> float:
    """`choice_losses` of ``pack[fixed]`` with ``weights``: each demonstration scored as a question."""
    scorer = pack_scorer(Pack(members, weighting="fixed", weights=list(weights)), ["fixed"])
    return choice_losses(scorer.loglikelihood_many([(d.context, d.options) for d in DEMOS]), "pack[fixed]")


class ScoredChoice(WeightProblem):
    """The same problem, its objective evaluated through `loss_from_scores` (an independent path)."""

    members: Sequence[Member] = ()

    def objective(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.tensor(loss_from_scores(self.members, weights.tolist()))


@pytest.mark.slow  # ~40 s: the independent loss re-scores the demonstrations at each of the grid's 42 points
def test_choice_fit_task_minimises_the_choice_loss_of_evaluations_own_scores(toy_members: dict[str, Member]) -> None:
    members = [toy_members["bytebpe"], toy_members["sentencepiece"], toy_members["wordpiece"]]
    scorer = pack_scorer(Pack(members), ["choice-fit-task", "demo-fit-task"])
    scorer.learn(DEMOS)
    scorer.loglikelihood_many([("Q: Sky?\nA:", [" blue", " red"])])
    weights = scorer.last_weights()
    got = torch.tensor([weights["pack[choice-fit-task]"][m.name] for m in members])
    # packllm-opt's greedy grid, ordered by each member's own choice loss, on the independently scored loss.
    independent = ScoredChoice(nll=torch.tensor([loss_from_scores(members, torch.eye(3)[k].tolist()) for k in range(3)]))
    independent.members = members
    expected = packllm_opt(independent, WeightOptions())
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    # The grid starts from the best member and only moves to improve: never worse than any member alone.
    assert loss_from_scores(members, got.tolist()) <= float(independent.nll.min()) + 1e-6
    # A generative fit on the same demonstrations is another objective: here it lands elsewhere.
    demo = torch.tensor([weights["pack[demo-fit-task]"][m.name] for m in members])
    assert not torch.allclose(demo, got, atol=1e-3)


def test_choice_loss_is_the_softmax_mass_of_the_correct_options() -> None:
    scores = torch.tensor([0.0, -1.0, -2.0, math.log(0.3), math.log(0.7)])
    question_of = torch.tensor([0, 0, 0, 1, 1])
    both = choice_loss(scores, question_of, torch.tensor([True, False, True, False, True]))
    p0 = (1 + math.exp(-2)) / (1 + math.exp(-1) + math.exp(-2))
    assert float(both) == pytest.approx(-(math.log(p0) + math.log(0.7)) / 2, rel=1e-6)
    # The mass, not the best: swapping which option is correct changes the loss.
    swapped = choice_loss(scores, question_of, torch.tensor([False, True, False, True, False]))
    assert float(swapped) > float(both)


def test_every_question_of_a_task_gets_the_tasks_choice_weights(toy_members: dict[str, Member]) -> None:
    from lmfuse.eval.runner import pooled_demonstrations

    members = [toy_members["bytebpe"], toy_members["sentencepiece"]]
    tasks = [MCTask("t", "test", [MCExample(query=f"Q: item {i}?\nA:", options=(f" right {i}", " wrong", " no"),
                                            correct=(0,)) for i in range(8)])]
    scorer = pack_scorer(Pack(members), ["choice-fit-task"])
    results = evaluate(scorer, tasks, limit=3, shots=1, seed=0, provenance=scorer.provenance())
    assert "- pack[choice-fit-task]: choosing the correct options of the task's demonstrations" in markdown(results)
    (result,) = results.tasks
    per = result.per_example["pack[choice-fit-task]"]
    shown = {i: metrics.shot_indices(range(8), i, 1, seed=0) for i in result.indices}
    learner = pack_scorer(Pack(members), ["choice-fit-task"])
    learner.learn(pooled_demonstrations(tasks[0].examples, shown, 0))
    learner.loglikelihood_many([("Q: x?\nA:", [" a", " b"])])
    expected = learner.last_weights()["pack[choice-fit-task]"]
    for m in members:
        assert per[f"weight:{m.name}"] == pytest.approx([expected[m.name]] * 3, abs=1e-6)


def test_choice_fit_task_without_demonstrations_names_shots(toy_members: dict[str, Member]) -> None:
    scorer = pack_scorer(Pack([toy_members["bytebpe"], toy_members["sentencepiece"]]), ["choice-fit-task"])
    with pytest.raises(InputError, match="--shots"):
        scorer.learn([])
    with pytest.raises(InputError, match="--shots"):
        scorer.loglikelihood_many([("Q: x?\nA:", [" a", " b"])])
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]])
    with pytest.raises(InputError, match=r"choice-fit-task.*--shots"):
        pack.fit(pack.analyse("Q: x?\nA:"), "choice-fit-task")
