"""lmfuse as an lm-evaluation-harness model (`lmfuse.eval.harness`), run through the real ``lm_eval`` on tasks
defined from local files (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmfuse.errors import InputError
from lmfuse.models.member import Member

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402

from lmfuse.ensemble import Pack  # noqa: E402
from lmfuse.eval.harness import HarnessModel  # noqa: E402
from lmfuse.eval.pack_scorer import pack_scorer  # noqa: E402
from lmfuse.eval.runner import evaluate  # noqa: E402

MC = [
    {"input": "Q: What colour is the sky on a clear day?\nA:", "choices": ["blue", "green", "red"], "target": 0},
    {"input": "Q: How many legs does a spider have?\nA:", "choices": ["six", "eight"], "target": 1},
    {"input": "Q: Which is a fruit?\nA:", "choices": ["carrot", "apple", "potato", "onion"], "target": 1},
    {"input": "The opposite of hot is", "choices": ["cold", "warm"], "target": 0},
    {"input": "def add(a, b):\n    return", "choices": ["a + b", "a - b"], "target": 0},
]
TEXTS = ["To be, or not to be, that is the question.", "import os\nprint(os.getcwd())\n", "Größe 日本 😀 done."]
GEN = [{"prompt": "Once upon a time", "target": " there"}, {"prompt": "def f(x):\n", "target": "    return"}]


def _task_dir(tmp: Path) -> Path:
    for name, rows in (("mc", MC), ("ppl", [{"text": t} for t in TEXTS]), ("gen", GEN)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = "dataset_path: json\ntest_split: test\n"
    (tmp / "toy_mc.yaml").write_text(
        f"task: toy_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {tmp / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{input}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{target}}'\nmetric_list:\n  - metric: acc\n")
    (tmp / "toy_ppl.yaml").write_text(
        f"task: toy_ppl\n{common}dataset_kwargs:\n  data_files:\n    test: {tmp / 'ppl.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n")
    (tmp / "toy_gen.yaml").write_text(
        f"task: toy_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {tmp / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return tmp


def _run(model: HarnessModel, tmp: Path, tasks: list[str]) -> dict[str, Any]:
    out = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=TaskManager(include_path=str(_task_dir(tmp))),
                                  log_samples=True, bootstrap_iters=0)
    assert out is not None
    return out


@pytest.fixture
def two(toy_members: dict[str, Member]) -> list[Member]:
    return [toy_members["bytebpe"], toy_members["sentencepiece"]]


@pytest.mark.parametrize(("weighting", "alignment"), [("uniform", "exact"), ("packllm-opt", "exact"),
                                                      ("packllm-opt", "mined")])
def test_lm_eval_accuracy_and_rolling_loglikelihoods_equal_lmfuse_eval(
        two: list[Member], tmp_path: Path, weighting: str, alignment: str) -> None:
    model = HarnessModel(members=two, weighting=weighting, alignment=alignment)
    out = _run(model, tmp_path, ["toy_mc", "toy_ppl"])
    jsonl = tmp_path / "mc.jsonl"
    ours = evaluate(pack_scorer(Pack(two, weighting=weighting, alignment=alignment), [weighting]), [f"jsonl:{jsonl}"])
    system = f"pack[{weighting}]"
    assert out["results"]["toy_mc"]["acc,none"] == pytest.approx(ours.tasks[0].metrics[system]["acc"])
    scorer = pack_scorer(Pack(two, weighting=weighting, alignment=alignment), [weighting])
    for sample in out["samples"]["toy_mc"]:  # every option's log-likelihood, not only the argmax
        doc = sample["doc"]
        expected = scorer.loglikelihood(doc["input"], [" " + c for c in doc["choices"]])[system]
        assert [float(r[0][0]) for r in sample["resps"]] == pytest.approx(expected, abs=1e-4)
    for sample in out["samples"]["toy_ppl"]:
        text = sample["doc"]["text"]
        logged = float(sample["resps"][0][0])
        assert logged == pytest.approx(scorer.text_logprob([text])[system][0], abs=1e-4)
    assert {e["request"] for e in model.weight_log} == {"loglikelihood", "loglikelihood_rolling"}
    for entry in model.weight_log:
        assert set(entry["weights"]) == {m.name for m in two} and sum(entry["weights"].values()) == pytest.approx(1)


def test_lm_eval_scores_one_member_alone_as_lmfuse_eval_does(two: list[Member], tmp_path: Path) -> None:
    from lmfuse.eval.member_scorer import MemberScorer

    out = _run(HarnessModel(members=two[:1]), tmp_path, ["toy_mc"])
    ours = evaluate(MemberScorer(two[0]), [f"jsonl:{tmp_path / 'mc.jsonl'}"])
    assert out["results"]["toy_mc"]["acc,none"] == pytest.approx(ours.tasks[0].metrics[two[0].name]["acc"])


def test_lm_eval_generation_is_the_packs_generation_with_its_stops(two: list[Member], tmp_path: Path) -> None:
    weights_out = tmp_path / "w" / "weights.jsonl"
    model = HarnessModel(members=two, weighting="uniform", weights_out=str(weights_out))
    out = _run(model, tmp_path, ["toy_gen"])
    pack = Pack(two, weighting="uniform")
    for sample in out["samples"]["toy_gen"]:
        expected = pack.generate([sample["doc"]["prompt"]], max_new_tokens=6, stop=["\n\n"])[0].text
        assert sample["resps"][0][0] == expected
    lines = [json.loads(x) for x in weights_out.read_text().splitlines()]
    assert len(lines) == len(GEN) and all(x["request"] == "generate_until" and x["task"] == "toy_gen" for x in lines)


def test_bad_model_arguments_name_the_valid_ones(two: list[Member]) -> None:
    with pytest.raises(InputError, match=r"unknown model argument 'weigting'.*did you mean 'weighting'"):
        HarnessModel(members=two, weigting="uniform")
    with pytest.raises(InputError, match="model=NAME"):
        HarnessModel()
    with pytest.raises(InputError, match="weights must be numbers"):
        HarnessModel(members=two, weighting="fixed", weights="a+b")
    with pytest.raises(InputError, match=r"alignment.*'minde'.*mined"):
        HarnessModel(members=two, alignment="minde")
    with pytest.raises(InputError, match="online"):  # not one of the paper's weightings
        HarnessModel(members=two, weighting="online", alignment="mined")


def test_a_member_that_cannot_load_fails_before_any_request(tmp_path: Path) -> None:
    from lmfuse.errors import LmfuseError

    with pytest.raises(LmfuseError):
        HarnessModel(model=str(tmp_path / "no-such-model"))


def test_lmfuse_lm_eval_passes_arguments_through_and_adds_the_weights_file() -> None:
    from lmfuse.cli.lmeval import with_weights_out

    argv = ["run", "--model", "lmfuse", "--model_args", "pack=default", "--output_path", "out/x", "--tasks", "t"]
    assert with_weights_out(argv) == ["run", "--model", "lmfuse", "--model_args", "weights_out=out/x/lmfuse-weights.jsonl",
                                      "pack=default", "--output_path", "out/x", "--tasks", "t"]
    no_args = ["run", "--model", "lmfuse", "-o", "o"]
    assert with_weights_out(no_args)[-2:] == ["--model_args", "weights_out=o/lmfuse-weights.jsonl"]
    assert with_weights_out(["run", "--tasks", "t"]) == ["run", "--tasks", "t"]


@pytest.mark.real
def test_lmfuse_lm_eval_runs_a_local_task_on_the_default_pack(tmp_path: Path) -> None:
    """The documented command, end to end: lm-eval's CLI through ``lmfuse lm-eval`` on the real default pack."""
    from conftest import real_home
    from lmfuse.cli.main import main

    if real_home() is None:
        pytest.skip("no real lmfuse home (run `lmfuse zoo fetch`)")
    tasks = _task_dir(tmp_path)
    out = tmp_path / "out"
    code = main(["lm-eval", "run", "--model", "lmfuse", "--model_args", "pack=default", "weighting=packllm-opt",
                 "--tasks", "toy_mc", "--include_path", str(tasks), "--output_path", str(out), "--limit", "3"])
    assert code == 0
    results = list(out.rglob("results_*.json"))
    assert results, list(out.rglob("*"))
    acc = json.loads(results[0].read_text())["results"]["toy_mc"]["acc,none"]
    assert 0 <= acc <= 1
    weights = [json.loads(x) for x in (out / "lmfuse-weights.jsonl").read_text().splitlines()]
    assert len(weights) == 3 and all(set(w["weights"]) == {"smollm2", "gemma3", "qwen-coder"} for w in weights)


def test_lmfuse_lm_eval_finds_the_task_names() -> None:
    from lmfuse.cli.lmeval import task_names, with_local_tasks

    argv = ["run", "--include_path", "/tmp/lmfuse_x", "--tasks", "a,lmfuse_piqa", "b", "--limit", "3", "-t=c"]
    assert task_names(argv) == ["a", "lmfuse_piqa", "b", "c"]
    plain = ["run", "--include_path", "/tmp/test_lmfuse_dir", "--tasks", "toy_mc"]
    assert with_local_tasks(plain) == plain  # a path that merely contains "lmfuse_" is not a task
    with pytest.raises(InputError, match="include_path"):
        with_local_tasks(["run", "--include_path", "d", "--tasks", "lmfuse_piqa"])
