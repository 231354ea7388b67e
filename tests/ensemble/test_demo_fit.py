"""``demo-fit``: the members' weights fitted on the answers of labelled demonstrations (k-shot), not on the
whole prompt; and the clear errors where there are none."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytest
import torch

from lmfuse.alignment import token_table
from lmfuse.ensemble import Pack
from lmfuse.ensemble.bytelevel import SortedVocab, next_byte_logprobs
from lmfuse.ensemble.weighting import WeightProblem, fit_weights
from lmfuse.errors import InputError
from lmfuse.eval import metrics
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.eval.runner import evaluate
from lmfuse.eval.scorer import Demonstration
from lmfuse.eval.tasks import MCExample, MCTask
from lmfuse.models.member import Member

DEMOS = [("Q: Which city is the capital of France?\nA:", " Paris"), ("Q: What is 2 + 3?\nA:", " five"),
         ("Q: Où est Zürich ?\nA:", " en Suisse — café")]  # multi-byte characters inside an answer
QUERY = "Q: Which colour is the sky?\nA:"


def answer_problem(members: Sequence[Member], context: str, spans: Sequence[tuple[int, int]]) -> WeightProblem:
    """The problem demo-fit should fit, computed directly: each member reads the whole context alone, and
    its exact next-byte log-probs at the answers' bytes (each given all the text before it) are stacked."""
    data = context.encode()
    byte_spans = [(len(context[:a].encode()), len(context[:b].encode())) for a, b in spans]
    log_probs, present = [], []
    for member in members:
        ids = member.encode(context).ids
        rows = member.log_probs([[member.prefix_token_id, *ids]])[0][:-1]
        table = token_table(member.tokenizer)
        readings = [next_byte_logprobs(SortedVocab.of(table, member.logits_width), rows, ids,
                                       [table.surface[i] for i in ids], data, 0, span, boundary_at_end=False)
                    for span in byte_spans]
        log_probs.append(torch.cat([r.log_probs for r in readings]))
        present.append(torch.cat([r.present for r in readings]))
    targets = torch.tensor([b for a, e in byte_spans for b in data[a:e]])
    return WeightProblem(nll=torch.zeros(len(members)), log_probs=torch.stack(log_probs).float(), targets=targets,
                         present=torch.stack(present))


def test_demo_fit_weights_are_packllm_opts_grid_on_the_answers_bytes(toy_members: dict[str, Member]) -> None:
    members = [toy_members["bytebpe"], toy_members["sentencepiece"]]
    pack = Pack(members)
    context, spans = metrics.kshot_context("Answer briefly.\n", DEMOS, QUERY, "\n\n")
    assert [context[a:b] for a, b in spans] == [a for _, a in DEMOS]
    scorer = pack_scorer(pack, ["demo-fit", "packllm-opt"])
    (scores,) = scorer.loglikelihood_many([(context, [" blue", " green"])], [spans])
    assert all(len(v) == 2 for v in scores.values())
    got = scorer.last_weights()["pack[demo-fit]"]
    expected = fit_weights("packllm-opt", answer_problem(members, context, spans))
    assert [got[m.name] for m in members] == pytest.approx(expected.tolist(), abs=1e-6)
    # The answers decide: the same context with other answers in the same places gets other weights.
    other = [(q, " " + "x" * (len(a) - 1)) for q, a in DEMOS]
    context2, spans2 = metrics.kshot_context("Answer briefly.\n", other, QUERY, "\n\n")
    scorer.loglikelihood_many([(context2, [" blue", " green"])], [spans2])
    expected2 = fit_weights("packllm-opt", answer_problem(members, context2, spans2))
    assert [scorer.last_weights()["pack[demo-fit]"][m.name] for m in members] == pytest.approx(
        expected2.tolist(), abs=1e-6)


def test_the_runner_hands_the_scorer_each_demonstrations_answer() -> None:
    """Spans survive the prompt's leading whitespace being dropped, and point at the correct options."""
    seen: list[tuple[str, list[tuple[int, int]]]] = []

    class Spy:
        def systems(self) -> list[str]:
            return ["spy"]

        def loglikelihood_many(self, requests, answers=None):  # type: ignore[no-untyped-def]
            assert answers is not None
            seen.extend((c, list(a)) for (c, _), a in zip(requests, answers, strict=True))
            return [{"spy": [0.0] * len(o)} for _, o in requests]

        def text_logprob(self, texts, preceding=None):  # type: ignore[no-untyped-def]
            raise AssertionError("no text task here")

        def loglikelihood(self, context, continuations):  # type: ignore[no-untyped-def]
            raise AssertionError("batched only")

    examples = [MCExample(query=f"Q: item {i}?\nA:", options=(f" right {i}", f" wrong {i}"), correct=(0,),
                          task_prefix="  \n Answer.\n") for i in range(6)]
    evaluate(Spy(), [MCTask("spy-task", "test", examples)], shots=2, seed=3, batch_size=4)
    assert len(seen) == 6
    for context, spans in seen:
        assert context.startswith("Answer.") and len(spans) == 2
        assert all(context[a:b].startswith(" right ") for a, b in spans)


def test_demo_fit_without_demonstrations_is_a_clear_error(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]])
    scorer = pack_scorer(pack, ["packllm-opt", "demo-fit"])
    with pytest.raises(InputError, match="--shots"):
        scorer.loglikelihood_many([("Q: Is the sky blue?\nA:", [" yes", " no"])])
    with pytest.raises(InputError, match="text does not have"):
        scorer.text_logprob(["The quick brown fox."])
    with pytest.raises(InputError, match="--shots"):
        pack.weights("The quick brown fox", "demo-fit")
    pack.reconfigure(weighting="demo-fit")
    with pytest.raises(InputError, match="--shots"):
        pack.generate(["The quick"], max_new_tokens=2)


def test_cli_eval_names_shots_before_any_model_loads() -> None:
    from lmfuse.cli.eval import check_demonstrations

    text = MCTask("mc-task", "test", [])
    with pytest.raises(InputError, match="--shots K"):
        check_demonstrations(argparse.Namespace(weighting="packllm-opt,demo-fit", shots=0), [text])
    check_demonstrations(argparse.Namespace(weighting="packllm-opt,demo-fit", shots=3), [text])
    check_demonstrations(argparse.Namespace(weighting="packllm-opt", shots=0), [text])

    class Text:
        name, kind = "shakespeare:hamlet", "text"

    with pytest.raises(InputError, match="shakespeare:hamlet is text"):
        check_demonstrations(argparse.Namespace(weighting="demo-fit", shots=3), [text, Text()])  # type: ignore[list-item]


def continuation_problem(members: Sequence[Member], pairs: Sequence[tuple[str, str]]) -> WeightProblem:
    """demo-fit-task's problem computed directly: each answer's bytes read after its question (tokenized
    apart, as an option is), every member its exact byte-level model, the examples' positions in turn."""
    log_probs, present, targets = [], [], []
    for member in members:
        table = token_table(member.tokenizer)
        readings = []
        for context, answer in pairs:
            ids = member.encode(context).ids + member.encode(answer).ids
            rows = member.log_probs([[member.prefix_token_id, *ids]])[0][:-1]
            data = (context + answer).encode()
            readings.append(next_byte_logprobs(SortedVocab.of(table, member.logits_width), rows, ids,
                                               [table.surface[i] for i in ids], data, 0,
                                               (len(context.encode()), len(data))))
        log_probs.append(torch.cat([r.log_probs for r in readings]))
        present.append(torch.cat([r.present for r in readings]))
    targets = [b for _, answer in pairs for b in answer.encode()]
    return WeightProblem(nll=torch.zeros(len(members)), log_probs=torch.stack(log_probs).float(),
                         targets=torch.tensor(targets), present=torch.stack(present))


def test_demo_fit_task_fits_once_on_the_pooled_answers_and_weighs_every_question_alike(
        toy_members: dict[str, Member]) -> None:
    members = [toy_members["bytebpe"], toy_members["sentencepiece"], toy_members["wordpiece"]]
    scorer = pack_scorer(Pack(members), ["demo-fit-task", "packllm-opt"])
    scorer.learn([Demonstration(c, (a, " nothing"), (0,)) for c, a in DEMOS])
    expected = fit_weights("packllm-opt", continuation_problem(members, DEMOS))
    results = scorer.loglikelihood_many([(QUERY, [" blue", " green"]), ("Q: And the grass?\nA:", [" green", " red"])])
    assert len(results) == 2
    for weights in scorer.batch_weights():
        assert [weights["pack[demo-fit-task]"][m.name] for m in members] == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(InputError, match="--shots"):
        scorer.learn([])


def test_pooled_demonstrations_are_the_shown_ones_never_an_evaluated_example() -> None:
    from lmfuse.eval.runner import POOLED_DEMONSTRATIONS, pooled_demonstrations

    examples = [MCExample(query=f" Q{i}:", options=(f" a{i}", f" b{i}"), correct=(1,), task_prefix="Task.\n")
                for i in range(200)]
    shown = {i: metrics.shot_indices(range(200), i, 3, seed=5) for i in range(0, 200, 2)}
    pooled = pooled_demonstrations(examples, shown, seed=5)
    assert len(pooled) == POOLED_DEMONSTRATIONS
    evaluated = {f"Task.\n Q{i}:" for i in shown}
    allowed = {f"Task.\n Q{j}:" for js in shown.values() for j in js}
    for demo in pooled:
        assert demo.context in allowed and demo.context not in evaluated
        i = demo.context.removeprefix("Task.\n Q").removesuffix(":")
        assert demo.options == (f" a{i}", f" b{i}") and demo.answer == f" b{i}"
    assert pooled_demonstrations(examples, {i: [] for i in range(5)}, seed=5) == []


def test_an_evaluation_learns_each_tasks_weights_before_scoring_it(toy_members: dict[str, Member]) -> None:
    from lmfuse.eval.runner import pooled_demonstrations

    members = [toy_members["bytebpe"], toy_members["sentencepiece"]]
    tasks = [MCTask(f"task{t}", "test", [MCExample(query=f"Q{t}: item {i}?\nA:", options=(f" right {i}", " wrong"),
                                                   correct=(0,)) for i in range(6)]) for t in range(2)]
    results = evaluate(pack_scorer(Pack(members), ["demo-fit-task"]), tasks, limit=2, shots=1, seed=0)
    for task, result in zip(tasks, results.tasks, strict=True):
        shown = {i: metrics.shot_indices(range(6), i, 1, seed=0) for i in result.indices}
        pooled = pooled_demonstrations(task.examples, shown, 0)
        expected = fit_weights("packllm-opt", continuation_problem(members, [(d.context, d.answer) for d in pooled]))
        per = result.per_example["pack[demo-fit-task]"]
        for k, m in enumerate(members):
            assert per[f"weight:{m.name}"] == pytest.approx([float(expected[k])] * 2, abs=1e-6)
