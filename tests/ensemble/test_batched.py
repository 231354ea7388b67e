"""Many prompts per forward pass, members at the same time: batched decoding is one-at-a-time decoding."""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lmfuse.ensemble import Pack, PackConfig
from lmfuse.ensemble.config import MemberSpec
from lmfuse.ensemble.generate import Decoder, Decoding, MemberWorkers
from lmfuse.errors import InputError, NumericalError
from lmfuse.models.member import Feed, Member, new_cache

# Mixed lengths, scripts and kinds of text, so batches pad, and members read them in different pieces.
PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "Numbers: 0 1 2 3 42, then",
           "Il était une fois, dans un pays lointain, une reine qui", "日本語の文章", "x",
           "Once upon a time there was a very long prompt that goes on and on about nothing in particular, and"]


def packs(toy: dict[str, Member]) -> list[Pack]:
    a, b, c = toy["bytebpe"], toy["sentencepiece"], toy["wordpiece"]
    return [Pack([a, b], weighting="fixed", weights=[0.6, 0.4]),  # byte-level BPE lead, SentencePiece votes
            Pack([b, a], weighting="fixed", weights=[0.3, 0.7], fusion="mixture"),
            Pack([a, b, c], weighting="packllm-opt"),  # three tokenizer families, weights fitted per prompt
            Pack([c, a], weighting="uniform", seed_member=c.name)]  # a lossy (WordPiece) lead


def test_batched_greedy_decoding_equals_one_prompt_at_a_time(toy_members: dict[str, Member]) -> None:
    for pack in packs(toy_members):
        batched = pack.generate(PROMPTS, max_new_tokens=12)
        alone = [pack.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
        for p, x, y in zip(PROMPTS, batched, alone, strict=True):
            assert (x.text, x.n_tokens, x.finish_reason) == (y.text, y.n_tokens, y.finish_reason), (pack.names, p)
            assert x.weights.weights == pytest.approx(y.weights.weights, abs=1e-6)
        small = pack.generate(PROMPTS, max_new_tokens=12, batch_size=3)  # prompts join as others finish
        assert [g.text for g in small] == [g.text for g in alone]


def test_serial_and_parallel_members_decode_the_same(toy_members: dict[str, Member]) -> None:
    assert not Pack([toy_members["bytebpe"], toy_members["sentencepiece"]]).workers.parallel  # auto: one device
    members = [toy_members["bytebpe"], toy_members["sentencepiece"], toy_members["wordpiece"]]
    parallel = Pack(members, weighting="uniform", parallel=True).generate(PROMPTS[:4], max_new_tokens=8)
    serial = Pack(members, weighting="uniform", parallel=False).generate(PROMPTS[:4], max_new_tokens=8)
    assert [g.text for g in parallel] == [g.text for g in serial]


def test_batched_feeds_give_each_cache_its_own_rows(toy_members: dict[str, Member]) -> None:
    """`Member.feed` over caches of different lengths (one empty) equals feeding each alone, rows and caches."""
    member = toy_members["sentencepiece"]
    heads = [member.encode(p).ids for p in PROMPTS[:4]]
    alone, together = [new_cache() for _ in heads], [new_cache() for _ in heads]
    for ids, ca, cb in zip(heads[1:], alone[1:], together[1:], strict=True):
        member.forward_cached(ids, ca)
        member.forward_cached(ids, cb)
    feeds = [[5, 6, 7], [9], [11, 12], [13, 14, 15, 16]]
    want = [member.forward_cached(f, c) for f, c in zip(feeds, alone, strict=True)]
    got = member.feed([Feed(c, f) for f, c in zip(feeds, together, strict=True)])
    for w, g, ca, cb in zip(want, got, alone, together, strict=True):
        assert g.shape == w.shape and torch.allclose(g, w, atol=1e-5)
        assert ca.get_seq_length() == cb.get_seq_length()
        assert torch.allclose(ca.layers[0].keys, cb.layers[0].keys, atol=1e-5)


def test_sampling_depends_only_on_the_prompts_own_seed(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], weighting="fixed", weights=[0.5, 0.5])
    together = pack.generate(PROMPTS[:3], max_new_tokens=10, temperature=1.0, seed=7)
    for i, p in enumerate(PROMPTS[:3]):
        (alone,) = pack.generate([p], max_new_tokens=10, temperature=1.0, seed=7 + i)
        assert alone.text == together[i].text
    again = pack.generate(PROMPTS[1:3], max_new_tokens=10, temperature=1.0, seed=8)
    assert [g.text for g in again] == [g.text for g in together[1:3]]


def test_a_prompt_joins_while_others_decode(toy_members: dict[str, Member]) -> None:
    """Continuous batching: a prompt added after three steps decodes as it would alone."""
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], weighting="fixed", weights=[0.4, 0.6])
    decoder = Decoder(pack)
    first, late = Decoding(pack, PROMPTS[0], max_new_tokens=10), Decoding(pack, PROMPTS[3], max_new_tokens=10)
    decoder.add(first)
    for _ in range(3):
        decoder.step()
    decoder.add(late)
    while decoder.live:
        decoder.step()
    want = pack.generate([PROMPTS[0], PROMPTS[3]], max_new_tokens=10)
    assert [first.result().text, late.result().text] == [g.text for g in want]
    assert "".join(first.pieces) == first.text  # pieces are handed out as they are decided


class FailsOn(torch.nn.Module):
    """A member model that raises (NaN logits) when it reads ``bad``: one prompt's feed fails a batch."""

    def __init__(self, member: Member, bad: int) -> None:
        super().__init__()
        self.inner, self.config, self.bad = member.model, member.model.config, bad

    def get_output_embeddings(self) -> Any:
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs: Any) -> Any:
        out = self.inner(**kwargs)
        rows = (kwargs["input_ids"] == self.bad).any(-1)
        logits = torch.where(rows[:, None, None], torch.full_like(out.logits, float("nan")), out.logits)
        return SimpleNamespace(logits=logits, cache=getattr(out, "cache", None))


def test_a_member_that_fails_one_prompt_fails_only_that_prompt(toy_members: dict[str, Member]) -> None:
    a, b = toy_members["bytebpe"], toy_members["sentencepiece"]
    bad = b.encode("日本語")
    flaky = dataclasses.replace(b, name="flaky", model=FailsOn(b, bad.ids[-1]))
    pack = Pack([a, flaky], weighting="fixed", weights=[0.5, 0.5], parallel=True)  # a worker thread per member
    decoder = Decoder(pack)
    good, broken = Decoding(pack, PROMPTS[0], max_new_tokens=6), Decoding(pack, "日本語", max_new_tokens=6)
    for d in (good, broken):
        decoder.add(d)
    done = threading.Event()

    def run() -> None:
        while decoder.live:
            decoder.step()
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert done.wait(60), "the decoder hung after a member raised"
    with pytest.raises(NumericalError, match="flaky"):
        broken.result()
    (want,) = Pack([a, b], weighting="fixed", weights=[0.5, 0.5]).generate([PROMPTS[0]], max_new_tokens=6)
    assert good.result().text == want.text
    with pytest.raises(NumericalError, match="flaky"):
        pack.generate(["日本語"], max_new_tokens=2)


def test_workers_wait_for_every_member_before_reporting_a_failure(toy_members: dict[str, Member]) -> None:
    a, b = toy_members["bytebpe"], toy_members["sentencepiece"]
    nan = dataclasses.replace(b, name="nan", model=FailsOn(b, b.prefix_token_id))
    workers = MemberWorkers([a, nan])
    out = workers.feed({0: [Feed(new_cache(), [a.prefix_token_id, 5])], 1: [Feed(new_cache(), [b.prefix_token_id])]})
    assert isinstance(out[1], NumericalError) and isinstance(out[0], list) and out[0][0].shape[0] == 2
    workers.close()


def test_member_specs_name_device_and_dtype() -> None:
    spec = MemberSpec.parse("qwen-coder,device=cpu,dtype=bfloat16,name=coder")
    assert (spec.spec, spec.device, spec.dtype, spec.name) == ("qwen-coder", "cpu", "bfloat16", "coder")
    config = PackConfig.of(members=["smollm2", "gemma3,dtype=float16"])
    assert [m.dtype for m in config.members] == [None, "float16"]
    with pytest.raises(InputError, match=r"devcie.*Did you mean 'device'"):
        MemberSpec.parse("smollm2,devcie=cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            MemberSpec.parse("smollm2,device=cuda:1")
    with pytest.raises(InputError, match="dtype"):
        MemberSpec.parse("smollm2,dtype=float64")
    with pytest.raises(InputError, match="Did you mean 'packllm-opt'"):
        PackConfig.of(weighting="packllm-op")
    with pytest.raises(InputError, match="fit_bytes"):
        PackConfig.of(fit_bytes=0)
    with pytest.raises(InputError, match="needs weights"):
        PackConfig.of(weighting="fixed")
