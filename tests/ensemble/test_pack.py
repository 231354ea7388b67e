"""Pack on tiny in-process members: exactness, cross-tokenizer fidelity, long prompts, errors, scorer."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lmfuse.ensemble import Pack
from lmfuse.ensemble.generate import allowed_ids
from lmfuse.ensemble.runs import read_examples
from lmfuse.errors import InputError, NumericalError
from lmfuse.eval.member_scorer import MemberScorer
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.eval.report import markdown
from lmfuse.eval.runner import Results, evaluate
from lmfuse.eval.tasks import MCExample, MCTask, TextTask
from lmfuse.models.member import Member

PROMPTS = ["The quick brown fox", "def add(a, b):\n", "Numbers: 0 1 2 3 42"]


def clone(member: Member, name: str) -> Member:
    return dataclasses.replace(member, name=name)


def reference_greedy(member: Member, prompt: str, n: int) -> str:
    """Plain greedy decoding without any cache: one full forward pass per step."""
    ids = [member.prefix_token_id, *member.encode(prompt).ids]
    allowed = allowed_ids(member)
    out: list[int] = []
    for _ in range(n):
        (lp,) = member.log_probs([ids + out])
        token = int(torch.argmax(lp[-1].masked_fill(~allowed, -math.inf)))
        if token == member.tokenizer.eos_token_id:
            break
        out.append(token)
    return member.tokenizer.decode(out).rstrip("\ufffd")


def byte_level_score(member: Member, context: str, continuation: str) -> float:
    """The member's own byte-level log-prob of ``continuation`` after ``context``: the sum over its bytes
    of the next-byte log-probs of the byte-level model its tokens define (`lmfuse.ensemble.bytelevel`)."""
    from lmfuse.alignment import token_table
    from lmfuse.ensemble.bytelevel import SortedVocab, next_byte_logprobs

    text = context + continuation
    enc = member.encode(context), member.encode(continuation)
    ids = enc[0].ids + enc[1].ids
    rows = member.log_probs([[member.prefix_token_id, *ids]])[0][:-1]
    table = token_table(member.tokenizer)
    data = text.encode()
    reading = next_byte_logprobs(SortedVocab.of(table, member.logits_width), rows, ids,
                                 [table.surface[i] for i in ids], data, 0, (len(context.encode()), len(data)))
    picked = reading.log_probs.gather(-1, torch.as_tensor(list(data[len(context.encode()):]))[:, None])
    return float(picked.sum())


def test_k1_reproduces_the_single_model_scores_and_greedy_text(toy_members: dict[str, Member]) -> None:
    for member in toy_members.values():
        pack = Pack([member])
        for prompt in PROMPTS[:1]:
            (gen,) = pack.generate([prompt], max_new_tokens=6)
            assert gen.text == reference_greedy(member, prompt, 6)
            assert gen.weights.weights == [1.0]
        if member.name == "toy-wordpiece":
            continue  # lossy: its tokens do not spell the text, so it has no byte-level reading (test_bytelevel)
        context, conts = "The quick brown", [" fox", " dog jumps"]
        scores = fused_score(pack, context, conts)
        for cont, got in zip(conts, scores, strict=True):
            assert got == pytest.approx(byte_level_score(member, context, cont), abs=1e-4)


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.9, 0.1], [0.0, 1.0]])
def test_identical_members_with_any_weights_reproduce_the_single_model(
        toy_members: dict[str, Member], weights: list[float]) -> None:
    base = toy_members["sentencepiece"]
    single = Pack([base])
    pair = Pack([base, clone(base, "twin")], weighting="fixed", weights=weights)
    fused = [g.text for g in pair.generate(PROMPTS[:2], max_new_tokens=6)]
    assert fused == [g.text for g in single.generate(PROMPTS[:2], max_new_tokens=6)]
    for fusion in ("product", "mixture"):
        pair.reconfigure(fusion=fusion)
        assert fused_score(pair, "The quick", [" brown", " fox jumps"]) == pytest.approx(
            fused_score(single, "The quick", [" brown", " fox jumps"]), abs=1e-4)


def test_scorer_systems_and_prefix_reuse_equals_recomputation(toy_members: dict[str, Member]) -> None:
    pack = Pack(list(toy_members.values()))
    scorer = pack_scorer(pack, ["uniform", "top1", "packllm-sim", "packllm-opt", "online"])
    assert scorer.systems() == [*pack.names, "pack[uniform]", "pack[top1]", "pack[packllm-sim]",
                                "pack[packllm-opt]", "pack[online]"]
    out = scorer.loglikelihood("Whether 'tis nobler in the", [" mind", " heart to suffer"])
    assert set(out) == set(scorer.systems())
    assert all(len(v) == 2 and all(math.isfinite(x) and x < 0 for x in v) for v in out.values())
    member = toy_members["bytebpe"]
    ((_, cached),) = read_examples(member, [("To be, or not", [" to be", " that"])], reuse_prefix=True)
    ((_, fresh),) = read_examples(member, [("To be, or not", [" to be", " that"])], reuse_prefix=False)
    for a, b in zip(cached, fresh, strict=True):
        assert torch.allclose(a.rows, b.rows, atol=1e-4)
    texts = scorer.text_logprob(["The quick brown fox jumps over the lazy dog."])
    assert set(texts) == set(scorer.systems())


def test_pack_member_columns_equal_each_member_scored_alone(toy_members: dict[str, Member]) -> None:
    """A BIG-bench prompt ends in "A: ": the pack moves that space into the options, so each member's
    column of a pack evaluation is what `MemberScorer` (joint tokenization) gives for the member alone."""
    pack = Pack(list(toy_members.values()))
    for context in ("Q: Is the sky blue?\nA: ", "Q: Is the sky blue?\nAnswer:\n"):
        options = ["Yes", "No, it is green"]
        fused = pack_scorer(pack, ["uniform"]).loglikelihood(context, options)
        for member in pack.members:
            alone = MemberScorer(member).loglikelihood(context, options)[member.name]
            assert fused[member.name] == pytest.approx(alone, abs=1e-4), (member.name, context)


def test_weights_report_explains_members_and_seed(toy_members: dict[str, Member]) -> None:
    pack = Pack(list(toy_members.values()), nll_norm="byte")
    report = pack.weights("To be, or not to be: that is the question.")
    assert abs(sum(report.weights) - 1) < 1e-5 and report.seed in pack.names
    heaviest = [k for k in range(3) if report.weights[k] >= max(report.weights) - 1e-9]
    assert report.seed == pack.names[min(heaviest, key=lambda k: report.nll[k])]  # the lead: largest weight
    for weighting in ("uniform", "top1"):  # uniform: all tie, the lowest NLL leads; top1: the one weighted
        tied = pack.weights("To be, or not to be: that is the question.", weighting)
        assert tied.seed == pack.names[min(range(3), key=lambda k: tied.nll[k])]
    text = str(report)
    assert "nats/byte" in text and "<- seed" in text and all(n in text for n in pack.names)
    forced = Pack(list(toy_members.values()), seed_member="toy-wordpiece").weights("To be, or not")
    assert forced.seed == "toy-wordpiece"


def test_evaluation_records_each_strategys_member_weights_per_example(
        toy_members: dict[str, Member], tmp_path: Path) -> None:
    """The weights an evaluation records are the ones `pack.weights` explains for the same prompt, per
    example and strategy, on the simplex, kept in results.json and summarised in the report."""
    queries = ["Q: Is the sky blue?\nA:", "Q: Is grass red?\nA:", "Q: Do fish swim?\nA:"]
    mc = MCTask("inline", "test", [MCExample(q, (" Yes", " No"), (0,)) for q in queries])
    text = TextTask("text", "test", ["The quick brown fox jumps.", "def add(a, b):\n    return a + b\n"])
    pack = Pack(list(toy_members.values()), weighting="packllm-opt")
    results = evaluate(pack_scorer(pack, ["uniform", "packllm-opt"]), [mc, text], fit_on="text")
    for task in results.tasks:
        for member in pack.names:
            assert task.weights(member) == {}
        assert all(w == pytest.approx([1 / 3] * task.n) for w in task.weights("pack[uniform]").values())
        opt = task.weights("pack[packllm-opt]")
        assert list(opt) == pack.names and all(len(w) == task.n for w in opt.values())
        for i in range(task.n):
            row = [opt[m][i] for m in pack.names]
            assert sum(row) == pytest.approx(1, abs=1e-5) and min(row) >= 0
    mc_opt = results.tasks[0].weights("pack[packllm-opt]")
    for i, query in enumerate(queries):
        assert [mc_opt[m][i] for m in pack.names] == pytest.approx(pack.weights(query).weights, abs=1e-6)
    text_opt = results.tasks[1].weights("pack[packllm-opt]")  # fitted on the chunk's bytes read once for scoring
    for i, chunk in enumerate(text.chunks):
        assert [text_opt[m][i] for m in pack.names] == pytest.approx(pack.weights(chunk).weights, abs=1e-6)
    path = tmp_path / "results.json"
    results.save(path)
    assert Results.load(path).tasks[1].weights("pack[packllm-opt]") == results.tasks[1].weights("pack[packllm-opt]")
    report = markdown(results)
    assert "## Member weights" in report and f"{' / '.join(pack.names)}" in report
    assert "| inline | 0.33 / 0.33 / 0.33 |" in report


def test_causal_text_scores_fit_the_weights_on_the_chunk_before(toy_members: dict[str, Member]) -> None:
    """``fit_on="preceding"`` (the default): chunk j is scored with the weights `pack.weights` gives chunk j-1, the first
    chunk (nothing before it) is not scored, and the members' columns do not change."""
    members = [toy_members["bytebpe"], toy_members["sentencepiece"]]
    chunks = ["The quick brown fox jumps over the lazy dog. ", "def add(a, b):\n    return a + b\n",
              "Numbers: 0 1 2 3 42 and more words here."]
    text = TextTask("text", "test", chunks)
    pack = Pack(members, weighting="packllm-opt")
    scorer = pack_scorer(pack, ["packllm-opt"])
    causal = evaluate(scorer, [text]).tasks[0]  # the default
    plain = evaluate(scorer, [text], fit_on="text").tasks[0]
    assert causal.indices == [1, 2] and plain.indices == [0, 1, 2]
    weights = causal.weights("pack[packllm-opt]")
    for row, i in enumerate(causal.indices):
        assert [weights[m][row] for m in pack.names] == pytest.approx(pack.weights(chunks[i - 1]).weights, abs=1e-6)
    for m in pack.names:
        assert causal.per_example[m]["logprob"] == pytest.approx(plain.per_example[m]["logprob"][1:], abs=1e-6)
    with pytest.raises(InputError, match="none to score with weights fitted on a preceding one"):
        evaluate(scorer, [TextTask("one", "test", chunks[:1])], fit_on="preceding")
    assert "Causal: each chunk is scored with weights fitted on the chunk before it" in markdown(
        evaluate(scorer, [text]))
    assert "Transductive" in markdown(evaluate(scorer, [text], fit_on="text"))


def test_sampling_is_reproducible_and_stop_strings_cut(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], weighting="uniform")
    a = pack.generate(["The quick"], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    b = pack.generate(["The quick"], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    assert a[0].text == b[0].text
    full = pack.generate(["The quick"], max_new_tokens=10)[0]
    assert full.finish_reason == "length" and full.n_tokens == 10
    if len(full.text) >= 3:
        stop = full.text[1:3]
        cut = pack.generate(["The quick"], max_new_tokens=10, stop=[stop])[0]
        assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_stream_has_weights_before_the_first_piece_and_matches_generate(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["wordpiece"]])
    stream = pack.stream("Whether 'tis nobler", max_new_tokens=8)
    assert stream.weights.members == pack.names  # type: ignore[attr-defined]
    pieces = list(stream)
    assert "".join(pieces) == pack.generate(["Whether 'tis nobler"], max_new_tokens=8)[0].text
    assert stream.finish_reason in ("stop", "length")  # type: ignore[attr-defined]


def test_long_prompt_keeps_its_end_within_each_members_context(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], weighting="uniform")
    long_prompt = "the quick brown fox jumps over the lazy dog " * 80  # far beyond the 256-token context
    gen = pack.generate([long_prompt], max_new_tokens=4)[0]
    assert gen.n_tokens == 4
    # The truncation is reported, per member, in the weights report (the server's lmfuse field; the CLI warns).
    assert set(gen.weights.truncated) == set(pack.names) and min(gen.weights.truncated.values()) > 0
    assert gen.weights.as_dict()["truncated"] == gen.weights.truncated and "read only the end" in str(gen.weights)
    tail = pack.generate([long_prompt[-100:]], max_new_tokens=4)[0]
    assert isinstance(tail.text, str) and tail.weights.truncated == {}
    with pytest.raises(InputError, match="leaves no room"):
        pack.generate(["hi"], max_new_tokens=400)
    scores = fused_score(pack, long_prompt, [" yes"])
    assert math.isfinite(scores[0])


def test_nan_logits_raise_a_clear_error(toy_members: dict[str, Member]) -> None:
    member = toy_members["bytebpe"]

    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = member.model
            self.config = member.model.config

        def get_output_embeddings(self) -> Any:
            return self.inner.get_output_embeddings()

        def forward(self, **kwargs: Any) -> Any:
            out = self.inner(**kwargs)
            return SimpleNamespace(logits=out.logits * float("nan"))

    broken = dataclasses.replace(member, name="broken", model=Broken())
    with pytest.raises(NumericalError, match="broken"):
        Pack([broken]).generate(["hello"], max_new_tokens=2)
    with pytest.raises(NumericalError, match="broken"):
        fused_score(Pack([broken]), "hello", [" world"])


def test_an_empty_context_is_named_as_such(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]])
    with pytest.raises(InputError, match="the context is empty, and packllm-opt fits the members' weights"):
        pack_scorer(pack, ["packllm-opt"]).loglikelihood("", [" a", " b"])
    assert len(pack_scorer(pack, ["uniform"]).loglikelihood("", [" a", " b"])["pack[uniform]"]) == 2


def test_bad_arguments_name_the_value(toy_members: dict[str, Member]) -> None:
    member = toy_members["bytebpe"]
    with pytest.raises(InputError, match="nll_norm"):
        Pack([member], nll_norm="char")
    with pytest.raises(InputError, match="seed member 'nope'"):
        Pack([member], seed_member="nope")
    with pytest.raises(InputError, match="empty prompt"):
        Pack([member]).generate([""])
    with pytest.raises(InputError, match="unique"):
        Pack([member, member])


def fused_score(pack: Pack, context: str, continuations: list[str]) -> list[float]:
    """The pack's fused log-likelihood of each continuation, with its own weighting."""
    return pack_scorer(pack, [pack.weighting]).loglikelihood(context, continuations)[f"pack[{pack.weighting}]"]
