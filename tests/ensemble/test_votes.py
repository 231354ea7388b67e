"""Members' votes on the seed's next token (`lmfuse.ensemble.votes`) and the decoding built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.ensemble.driving import drive

from lmfuse.alignment import token_table
from lmfuse.ensemble import Pack
from lmfuse.ensemble import votes as votes_module
from lmfuse.ensemble.generate import Stream
from lmfuse.ensemble.votes import Cover, LeadMaps, vote
from lmfuse.models.member import Member


def _lexicon(member: Member):  # type: ignore[no-untyped-def]
    return Pack([member]).vocab.lexicon(0)


def _random_row(width: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(width, generator=g) * 3, -1).numpy()


def test_member_with_the_seeds_vocabulary_votes_its_own_row(toy_members: dict[str, Member]) -> None:
    member = toy_members["bytebpe"]
    lex = _lexicon(member)
    maps = LeadMaps.of(lex, lex)
    assert not maps.stops_short.any()  # its longer tokens are its own: no token stops short of them
    row = _random_row(lex.width, 0)
    ballot = vote(maps, [Cover(0.0, row, b"")])
    assert ballot is not None and ballot.cut == 0
    own = np.where(lex.text, np.exp(row), 0.0)
    own[lex.eos] = math.exp(row[lex.eos])
    np.testing.assert_allclose(ballot.probs, own / np.exp(row).sum(), atol=1e-9)


def _longest_prefix(surfaces: list[bytes], text_ids: list[int], home: dict[bytes, int], r: bytes) -> int:
    """The longest surface among ``text_ids`` that ``r`` starts with, as the id that holds that surface
    (a byte token and a normal token may spell the same byte: the normal one)."""
    length = max((len(surfaces[t]) for t in text_ids if r.startswith(surfaces[t])), default=0)
    return home[r[:length]] if length else -1


@pytest.mark.parametrize(("member_family", "seed_family"), [("bytebpe", "sentencepiece"),
                                                            ("sentencepiece", "bytebpe")])
def test_vote_equals_the_sum_over_covers_written_from_the_definition(
        toy_members: dict[str, Member], member_family: str, seed_family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cover (boundary, token running past the end) gives its mass to the seed's longest token its
    remainder begins with; the vote is that sum over all covers' mass (tokens ending at the end and
    specials included in the total). Brute force over every token, against the fast path."""
    monkeypatch.setattr(votes_module, "TAIL_TOKENS", 100_000)
    monkeypatch.setattr(votes_module, "TAIL_MASS", 1.0)
    member, seed = toy_members[member_family], toy_members[seed_family]
    lk, ll = _lexicon(member), _lexicon(seed)
    maps = LeadMaps.of(lk, ll)
    text_k = lk.sorted.order.tolist()
    text_l = ll.sorted.order.tolist()
    for n, pendings in enumerate([[b""], [b"th", b""], [b" the", b"e", b""], [b"o", b""]]):
        covers = [Cover(-0.7 * j, _random_row(lk.width, 10 * n + j), p) for j, p in enumerate(pendings)]
        expected = np.zeros(ll.width)
        total = 0.0
        for c in covers:
            probs = np.exp(c.row + c.log_before)
            if c.pending:
                reach = [u for u in text_k if lk.surfaces[u].startswith(c.pending)]
                total += sum(probs[u] for u in reach)
            else:
                reach = text_k
                total += probs.sum()
                expected[ll.eos] += probs[lk.eos]
            for u in reach:
                r = lk.surfaces[u][len(c.pending):]
                a = _longest_prefix(ll.surfaces, text_l, ll.index.home, r) if r else -1
                if a >= 0:
                    expected[a] += probs[u]
        ballot = vote(maps, covers)
        assert ballot is not None
        np.testing.assert_allclose(ballot.probs, expected / total, rtol=1e-5, atol=1e-9)  # float32 rows
        assert ballot.probs.sum() <= 1 + 1e-9


def test_a_member_votes_inside_a_character_the_seed_has_half_written(toy_members: dict[str, Member]) -> None:
    """The seed (SentencePiece with byte fallback) writes 日 as three byte tokens; after the first, the other
    member still votes (no abstention), with a proper sub-distribution over the seed's tokens."""
    seed, member = toy_members["sentencepiece"], toy_members["bytebpe"]
    pack = Pack([seed, member], weighting="fixed", seed_member=seed.name, weights=[0.5, 0.5])
    stream = Stream(pack, "The word for sun is", max_new_tokens=4)
    reader = stream.readers[1]
    assert reader.maps is not None
    text = " 日".encode()
    for cut in range(2, len(text)):
        covers = drive(reader, reader.read(text[:cut]))  # a space, then one or two bytes of 日
        assert covers is not None
        ballot = vote(reader.maps, covers)
        assert ballot is not None and 0 < ballot.probs.sum() <= 1 + 1e-9
        stream.covers[1] = covers
        row = stream._fused_row()
        assert bool(torch.isfinite(row).any()) and float(torch.logsumexp(row, 0)) <= 1e-5  # specials masked


@pytest.mark.parametrize("b_family", ["bytebpe", "sentencepiece"])
def test_one_hot_weights_generate_exactly_as_that_member_whoever_reads_best(
        toy_members: dict[str, Member], b_family: str) -> None:
    """The seed is the member with the most weight, so a one-hot pack decodes as that member alone, token
    for token, whichever member read the prompt best."""
    members = [toy_members[f] for f in ("bytebpe", "sentencepiece", "wordpiece")]
    k = [m.name for m in members].index(toy_members[b_family].name)
    fixed = [1.0 if i == k else 0.0 for i in range(3)]
    for prompt in ("To be, or not to be:", "def add(a, b):\n    return", "Größe 日本 😀"):
        alone = Pack([members[k]]).generate([prompt], max_new_tokens=12)[0]
        fused = Pack(members, weighting="fixed", weights=fixed).generate(
            [prompt], max_new_tokens=12)[0]
        assert fused.weights.seed == members[k].name
        assert fused.text == alone.text and fused.n_tokens == alone.n_tokens


def test_mixed_weights_every_member_reads_the_text_in_its_own_tokens(toy_members: dict[str, Member]) -> None:
    """With weight on both members each step fuses both; the reader's ids spell the seed's text (the last
    one possibly running past it), and its recorded covers all reach the end."""
    seed, member = toy_members["sentencepiece"], toy_members["bytebpe"]
    pack = Pack([seed, member], weighting="fixed", seed_member=seed.name, weights=[0.5, 0.5])
    stream = Stream(pack, "Once upon a time", max_new_tokens=16)
    text = "".join(stream)
    reader = stream.readers[1]
    spelled = b"".join(pack.vocab.lexicon(1).surfaces[t] for t in reader.ids[len(reader.head):])
    written = b"".join(pack.vocab.lexicon(0).surfaces[t] for t in stream.readers[0].ids[len(stream.readers[0].head):])
    assert spelled[: len(written)] == written[: len(spelled)]
    assert text and len(stream.cut) >= 1 and all(0 <= c <= 1 for c in stream.cut)


def test_lead_maps_name_the_tokens_that_stop_short(toy_members: dict[str, Member]) -> None:
    member, seed = toy_members["bytebpe"], toy_members["sentencepiece"]
    maps = LeadMaps.of(_lexicon(member), _lexicon(seed))
    tm, ts = token_table(member.tokenizer), token_table(seed.tokenizer)
    seed_surfaces = [s for s in ts.surface if s]
    member_surfaces = {s for s in tm.surface if s}
    for u in np.flatnonzero(maps.stops_short).tolist()[:50]:
        s = tm.surface[u]
        # some seed token extends it, and no longer member token is a prefix of that seed token
        assert any(t.startswith(s) and len(t) > len(s) and not any(
            t.startswith(m) and len(m) > len(s) for m in member_surfaces) for t in seed_surfaces)


def test_members_read_a_lossy_seeds_decoded_text(toy_members: dict[str, Member]) -> None:
    """A WordPiece seed's surfaces do not spell its text (it invents spaces at decoding); the others read the
    decoded text, so their tokens spell what the pack wrote."""
    seed, member = toy_members["wordpiece"], toy_members["bytebpe"]
    pack = Pack([seed, member], weighting="fixed", seed_member=seed.name, weights=[0.6, 0.4])
    stream = Stream(pack, "the end of the", max_new_tokens=10)
    text = "".join(stream)
    reader = stream.readers[1]
    spelled = b"".join(pack.vocab.lexicon(1).surfaces[t] for t in reader.ids[len(reader.head):]).decode("utf-8", "replace")
    n = min(len(spelled), len(text))
    assert n > 0 and spelled[:n] == text[:n], (spelled, text)
