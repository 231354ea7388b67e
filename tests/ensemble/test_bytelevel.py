"""Members read as exact byte-level models (`lmfuse.ensemble.bytelevel`), and the pack fused over bytes.

Named sharp edges: position i predicts token i+1 (the row of each boundary); byte tokens and partial UTF-8
characters (every member votes on every byte of a character); logit widths larger than the tokenizer (the
padded ids carry no text); lossy tokenizers (WordPiece) abstain. Invariants of a fused distribution: each
next-byte distribution sums to 1, one-hot weights give that member exactly, and the product and mixture
pools are never worse than the weighted average of their members.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.alignment import token_table
from lmfuse.ensemble import Pack
from lmfuse.ensemble.bytelevel import SortedVocab, next_byte_logprobs
from lmfuse.ensemble.runs import read_text
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.models.member import Member

TEXTS = ["The cat sat on the mat.", "Ünïcödé 日本語 😀 fin", "def f(x):\n    return x  # ok\n\n\tdone"]
EXACT = ("bytebpe", "sentencepiece")  # the toy families whose tokens spell the text (WordPiece does not)


def reading(member: Member, text: str, span: tuple[int, int] | None = None, boundary_at_end: bool = True) -> Any:
    run = read_text(member, text)
    table = token_table(member.tokenizer)
    data = text.encode()
    first = len(text[: run.offsets[0][0]].encode())
    return run, next_byte_logprobs(SortedVocab.of(table, member.logits_width), run.rows, run.ids,
                                   [table.surface[i] for i in run.ids], data, first, span or (first, len(data)),
                                   boundary_at_end)


def brute_force_prefix(member: Member, text: str, prefix: bytes, ending: bool = False) -> float:
    """P(the text starts with ``prefix``), summed token by token over the covers the module docstring
    defines (every boundary of the member's own tokens of ``text`` before the prefix's end, every
    vocabulary id whose surface continues the prefix there), with no sorting and no cumulative sums.
    ``ending``: only the covers whose last token ends exactly at the prefix's end."""
    if not prefix:
        return 1.0
    run = read_text(member, text)
    table = token_table(member.tokenizer)
    first = len(text[: run.offsets[0][0]].encode())
    total, start, log_before = 0.0, first, 0.0
    for k, token in enumerate(run.ids):
        if start >= len(prefix):
            break
        rest = prefix[start:]
        row = run.rows[k].double().exp()
        for t in range(min(table.size, member.logits_width)):
            s = table.surface[t]
            if table.kind[t] in (0, 1) and s[: len(rest)] == rest and (len(s) == len(rest) if ending else
                                                                       len(s) >= len(rest)):
                total += float(row[t]) * math.exp(log_before)
        log_before += float(run.rows[k, token])
        start += len(table.surface[token])
    return total


@pytest.mark.parametrize("family", EXACT)
@pytest.mark.parametrize("text", TEXTS[:2])
def test_next_byte_distribution_equals_a_brute_force_sum_over_covers(
        toy_members: dict[str, Member], family: str, text: str) -> None:
    member = toy_members[family]
    _, got = reading(member, text, boundary_at_end=False)
    data = text.encode()
    for i in range(len(data)):
        before = brute_force_prefix(member, text, data[:i])
        for b in {data[i], 0x20, 0x61, 0xE6}:  # the text's byte and a few others
            want = brute_force_prefix(member, text, data[:i] + bytes([b])) / before
            assert float(got.log_probs[i, b].exp()) == pytest.approx(want, rel=1e-4, abs=1e-9), (family, text, i, b)


@pytest.mark.parametrize("family", EXACT)
@pytest.mark.parametrize("text", TEXTS)
def test_every_next_byte_distribution_is_proper_also_inside_a_character(
        toy_members: dict[str, Member], family: str, text: str) -> None:
    _, got = reading(toy_members[family], text)
    assert bool(got.present.all())
    assert got.log_probs.shape[-1] == 257  # the 256 bytes and OTHER
    assert torch.allclose(got.log_probs.exp().sum(-1), torch.ones(len(text.encode())), atol=1e-5)
    inside = [i for i, b in enumerate(text.encode()) if b & 0xC0 == 0x80]  # UTF-8 continuation bytes
    if not text.isascii():  # the member votes inside every character, with a proper distribution
        assert inside and bool(torch.isfinite(got.log_probs[inside]).all())
        assert bool((got.log_probs[inside].exp().sum(-1) - 1).abs().max() < 1e-5)


def test_padded_logits_and_special_tokens_carry_no_text(toy_members: dict[str, Member]) -> None:
    member = toy_members["bytebpe"]  # 400 tokens, logits padded to 448
    table = token_table(member.tokenizer)
    vocab = SortedVocab.of(table, member.logits_width)
    assert int(vocab.order.max()) < table.size and len(vocab.order) < member.logits_width
    run, base = reading(member, TEXTS[0])
    boosted = run.rows.clone()
    boosted[:, table.size:] = 5.0  # all the mass on padded ids: the text's bytes keep their ratios
    boosted[:, member.tokenizer.eos_token_id] = 5.0
    data = TEXTS[0].encode()
    again = next_byte_logprobs(vocab, torch.log_softmax(boosted, -1), run.ids, [table.surface[i] for i in run.ids],
                               data, 0, (0, len(data)))
    # The mass on padded ids and EOS is no byte: it is OTHER (the text may end there), and the bytes keep
    # their ratios. At byte 0 (one boundary) the byte distributions agree once OTHER is set aside.
    assert float(again.other[0]) > 0.9 > float(base.other[0])
    assert torch.allclose(torch.log_softmax(again.log_probs[0, :256], -1), torch.log_softmax(base.log_probs[0, :256], -1),
                          atol=1e-4)


def test_a_lossy_tokenizer_abstains_instead_of_inventing_text(toy_members: dict[str, Member]) -> None:
    _, got = reading(toy_members["wordpiece"], "Hello, World")
    assert not bool(got.present.any())  # its tokens add spaces and lower-case: not the text's bytes


def test_text_logprob_of_the_members_byte_models_is_their_prefix_probability(
        toy_members: dict[str, Member]) -> None:
    """Over a whole text the next-byte log-probs add up to the member's probability of the text as a byte
    prefix, or (``boundary_at_end``, how a member scores a text alone) of the text with a token boundary
    at its end: its own token log-likelihood (one cover) plus the other covers' mass, never less."""
    for family in EXACT:
        member = toy_members[family]
        for text in TEXTS[:2]:
            data = text.encode()
            for ending in (False, True):
                run, got = reading(member, text, boundary_at_end=ending)
                byte_total = float(got.log_probs.gather(-1, torch.as_tensor(list(data))[:, None]).sum())
                want = math.log(brute_force_prefix(member, text, data, ending=ending))
                assert byte_total == pytest.approx(want, abs=1e-3), (family, text, ending)
                assert byte_total >= float(run.token_logprobs.sum()) - 1e-4  # its own tokens are one cover


def one_hot_pack(members: list[Member], target: int, fusion: str) -> Pack:
    weights = [1.0 if k == target else 0.0 for k in range(len(members))]
    return Pack(members, weighting="fixed", fusion=fusion, weights=weights)


@pytest.mark.parametrize("fusion", ["product", "mixture"])
def test_one_hot_weights_give_that_member_exactly_whoever_reads_best(
        toy_members: dict[str, Member], fusion: str) -> None:
    members = [toy_members[f] for f in (*EXACT, "wordpiece")]
    for target in range(2):
        pack = one_hot_pack(members, target, fusion)
        scorer = pack_scorer(pack, ["fixed"])
        for text in TEXTS:
            _, own = reading(members[target], text)
            data = text.encode()
            want = float(own.log_probs.gather(-1, torch.as_tensor(list(data))[:, None]).sum())
            assert scorer.text_logprob([text])["pack[fixed]"][0] == pytest.approx(want, abs=1e-3)
        got = scorer.loglikelihood("The quick brown", [" fox", " 日本"])["pack[fixed]"]
        for cont, value in zip([" fox", " 日本"], got, strict=True):
            _, own = reading(members[target], "The quick brown" + cont, (15, len(("The quick brown" + cont).encode())))
            data = cont.encode()
            assert value == pytest.approx(float(own.log_probs.gather(-1, torch.as_tensor(list(data))[:, None]).sum()),
                                          abs=1e-3)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2).filter(lambda w: sum(w) > 1e-3),
       st.sampled_from(TEXTS), st.sampled_from(["product", "mixture"]))
def test_pooling_bounds_fused_bits_per_byte_never_exceed_the_weighted_average(
        toy_members: dict[str, Member], raw: list[float], text: str, fusion: str) -> None:
    members = [toy_members[f] for f in EXACT]
    w = torch.tensor(raw) / sum(raw)
    pack = Pack(members, weighting="fixed", fusion=fusion, weights=w.tolist())
    fused = pack_scorer(pack, ["fixed"]).text_logprob([text])["pack[fixed]"][0]
    data = torch.as_tensor(list(text.encode()))
    own = [float(reading(m, text)[1].log_probs.gather(-1, data[:, None]).sum()) for m in members]
    assert -fused <= float(-(w * torch.tensor(own)).sum()) + 1e-3
