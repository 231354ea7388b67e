"""Cross-tokenizer fidelity: with all weight on member B and the seed A, fused greedy = B's own greedy.

Random tiny models make poor witnesses (their greedy text is a non-canonical token soup), so member B here
is an *oracle*: a causal "model" that, whatever token ids it is fed, decodes them and predicts the first
token of its own canonical tokenization of the rest of a fixed target text. Its own greedy output is the
target; the pack must write exactly that text through seed A's vocabulary, which splits B's tokens
differently, while B re-reads the text in its own tokenization at every step (KV cache rollbacks included).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tests.ensemble.driving import drive

from lmfuse.ensemble import Pack
from lmfuse.models.member import Member

PROMPT = "To be, or not to be:"
TARGET = " that is the question. Whether 'tis nobler in the mind\n\tto suffer 42 slings"


class Oracle(torch.nn.Module):
    def __init__(self, tokenizer: Any, target: str, width: int) -> None:
        super().__init__()
        self.tok, self.target = tokenizer, target
        self.lm_head = torch.nn.Linear(1, width, bias=False)
        self.config = SimpleNamespace(max_position_embeddings=1024)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def _next(self, ids: list[int]) -> torch.Tensor:
        text = self.tok.decode(ids)
        logits = torch.zeros(self.lm_head.weight.shape[0])
        if self.target.startswith(text) and len(text) < len(self.target):
            nxt = self.tok(self.target[len(text):], add_special_tokens=False)["input_ids"]
            logits[nxt[0]] = 12.0
            if len(nxt) > 1:
                logits[nxt[1]] = 6.0  # a runner-up, so the distribution is not one-hot
        else:
            logits[self.tok.eos_token_id] = 12.0
        return logits

    def forward(self, input_ids: torch.Tensor, cache: Any = None, **_: Any) -> Any:
        new = input_ids[0].tolist()
        if cache is not None:  # keep the id history in the cache, so crop() rolls it back
            k = torch.tensor(new, dtype=torch.float32)[None, None, :, None]
            cache.update(k, k, 0)
            hist = cache.layers[0].keys[0, 0, :, 0].long().tolist()
        else:
            hist = new
        start = len(hist) - len(new)
        rows = [self._next(hist[1 : i + 1]) for i in range(start, len(hist))]
        return SimpleNamespace(logits=torch.stack(rows)[None])


def oracle_member(like: Member, target: str) -> Member:
    return Member(name=f"oracle-{like.name}", tokenizer=like.tokenizer,
                  model=Oracle(like.tokenizer, target, like.logits_width), source="test")


def char_agreement(reference: str, got: str) -> float:
    """Share of the reference's characters reproduced before the first difference."""
    same = next((i for i, (a, b) in enumerate(zip(reference, got, strict=False)) if a != b),
                min(len(reference), len(got)))
    return same / max(len(reference), 1)


@pytest.mark.parametrize(("seed_family", "b_family"), [("bytebpe", "sentencepiece"), ("sentencepiece", "bytebpe")])
def test_all_weight_on_b_with_seed_a_reproduces_b_own_greedy_text(
        toy_members: dict[str, Member], seed_family: str, b_family: str) -> None:
    a = toy_members[seed_family]
    b = oracle_member(toy_members[b_family], PROMPT + TARGET)
    own = Pack([b]).generate([PROMPT], max_new_tokens=80)[0]
    assert own.text == TARGET and own.finish_reason == "stop"
    a_ids, b_ids = a.encode(TARGET).ids, b.encode(TARGET).ids
    assert a_ids != b_ids  # the two tokenizations really differ
    fused = Pack([a, b], weighting="fixed", seed_member=a.name, weights=[0.0, 1.0])
    gen = fused.generate([PROMPT], max_new_tokens=120)[0]
    assert gen.weights.seed == a.name
    assert char_agreement(own.text, gen.text) == 1.0, (own.text, gen.text)
    assert gen.text == own.text and gen.finish_reason == "stop"


class PathOracle(Oracle):
    """A stricter oracle: it knows only its own canonical token path of ``target`` (``prefix + ids``).

    Fed exactly a prefix of that path it predicts the next id of it; fed anything else (another
    segmentation of the same text, such as ``ĠĠĠĠ`` where its path has ``ĠĠĠ Ġre``) it writes EOS, as a
    model does in a context it never saw in training.
    """

    def __init__(self, tokenizer: Any, target: str, width: int) -> None:
        super().__init__(tokenizer, target, width)
        self.path = [tokenizer.bos_token_id, *tokenizer(target, add_special_tokens=False)["input_ids"]]

    def _next(self, ids: list[int]) -> torch.Tensor:
        hist = [self.path[0], *ids]
        logits = torch.zeros(self.lm_head.weight.shape[0])
        n = len(hist)
        if hist == self.path[:n] and n < len(self.path):
            logits[self.path[n]] = 12.0
            if n + 1 < len(self.path):
                logits[self.path[n + 1]] = 6.0
        else:
            logits[self.tok.eos_token_id] = 12.0
        return logits


RESEGMENTING_TARGETS = [
    TARGET,
    "\ndef add(a, b):\n    return a + b\n\n\nclass Stack:\n        x = 1   ",
    " the end.\n\n    Whether   it  is\n  nobler",
]


def test_toy_tokenizers_resegment_a_growing_text(toy_members: dict[str, Member]) -> None:
    """The mechanism the next test guards against: the tokens of a text that is still growing are not a prefix
    of the longer text's tokens. Byte-level BPE groups a text-final whitespace run (``ĠĠĠĠ``) but splits off
    its last space before a word (``ĠĠĠ Ġre``); BPE merges re-segment earlier pieces (``cl as`` -> ``cl a ss``)."""
    cases = {"bytebpe": ("def add(a, b):\n    ", "return"), "sentencepiece": ("\n\n\nclas", "s")}
    for family, (part, more) in cases.items():
        m = toy_members[family]
        n = len(m.encode(part).ids)
        assert m.encode(part + more).ids[:n] != m.encode(part).ids, family


@pytest.mark.parametrize("target", RESEGMENTING_TARGETS)
@pytest.mark.parametrize(("seed_family", "b_family"), [("bytebpe", "sentencepiece"), ("sentencepiece", "bytebpe")])
def test_fidelity_path_oracle_member_reads_its_own_pieces(
        toy_members: dict[str, Member], seed_family: str, b_family: str, target: str) -> None:
    """Regression (gemma3 seed, all weight on smollm2 diverged after ``" Rome.\\n\\n"``): the member re-read
    ``"\\n\\n"`` as ``ĊĊ``, where its own path was ``Ċ Ċ The``, and then wrote ``"2."``. A member must read
    the growing text in the pieces it would have written itself, merging only where it prefers the merge."""
    a, like = toy_members[seed_family], toy_members[b_family]
    b = Member(name=f"path-oracle-{like.name}", tokenizer=like.tokenizer,
               model=PathOracle(like.tokenizer, PROMPT + target, like.logits_width), source="test")
    own = Pack([b]).generate([PROMPT], max_new_tokens=80)[0]
    assert own.text == target and own.finish_reason == "stop"
    fused = Pack([a, b], weighting="fixed", seed_member=a.name, weights=[0.0, 1.0])
    gen = fused.generate([PROMPT], max_new_tokens=120)[0]
    assert gen.text == own.text, (own.text, gen.text)
    assert gen.finish_reason == "stop"



def test_indentation_the_seed_writes_as_one_token_is_read_before_the_next_word(
        toy_members: dict[str, Member]) -> None:
    """Regression (gemma3 seed: `lmfuse generate "def quicksort(xs):"` looped on blank lines). A seed may
    write indentation as one token (``"    "``, then ``"return"``); byte-level BPE reads a text ending in
    ``"\n    "`` canonically as one whitespace token, which in its own path (``ĠĠĠ Ġre``) never comes before
    a word, so a member reading it that way votes for an end there. The member reads in its own pieces
    instead: ``"\n   "``, with the last space pending, covered by its ``" re"`` (read ahead), so its vote
    is for the word (the seed's ``"re"``); its ids stay in step when the seed writes it."""
    from lmfuse.ensemble.generate import Stream
    from lmfuse.ensemble.votes import vote

    prompt, target = "def add(a, b):", "\n    return a + b\n"
    seed = oracle_member(toy_members["sentencepiece"], prompt + target)
    like = toy_members["bytebpe"]
    member = Member(name="path-oracle-bytebpe", tokenizer=like.tokenizer,
                    model=PathOracle(like.tokenizer, prompt + target, like.logits_width), source="test")
    fused = Pack([seed, member], weighting="fixed", seed_member=seed.name, weights=[0.5, 0.5])
    reader = Stream(fused, prompt, max_new_tokens=8).readers[1]
    assert reader.maps is not None
    drive(reader, reader.read(b"\n"))  # the seed wrote "\n", then "    "
    covers = drive(reader, reader.read(b"\n    "))
    assert covers is not None
    own = like.encode("\n    return").ids
    assert reader.ids[len(reader.head):] == own[:3]  # "\n", "   ", and " re" read ahead
    ballot = vote(reader.maps, covers)
    assert ballot is not None
    seed_tok = seed.tokenizer
    assert seed_tok.decode([int(ballot.probs.argmax())]) == seed_tok.decode(seed.encode("re").ids[:1])
    drive(reader, reader.read(b"\n    re"))  # the next token: still its own path (and its next token read ahead)
    assert reader.ids[len(reader.head):] == own[: len(reader.ids) - len(reader.head)]
    assert int(reader.row.argmax()) == member.model.path[len(reader.ids)]
