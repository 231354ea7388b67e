"""The pack on the real default-pack members (skipped when they are not installed)."""

from __future__ import annotations

import pytest
from tests.ensemble.driving import drive

from lmfuse.ensemble import Pack

from .test_pack import reference_greedy

pytestmark = pytest.mark.real

PROMPT = "def fibonacci(n):\n"


def load(name: str):  # type: ignore[no-untyped-def]
    from lmfuse.errors import ModelLoadError
    from lmfuse.models.load import load_member

    try:
        return load_member(name)
    except ModelLoadError as exc:
        pytest.skip(f"{name} not installed: {exc}")


@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen-coder"])
def test_k1_greedy_equals_uncached_reference_on_real_member(name: str) -> None:
    member = load(name)
    assert Pack([member]).generate([PROMPT], max_new_tokens=12)[0].text == reference_greedy(member, PROMPT, 12)


@pytest.mark.parametrize("b", ["smollm2", "gemma3", "qwen-coder"])
def test_one_hot_pack_generates_exactly_as_each_real_member(b: str) -> None:
    """All weight on B with the other members present: the seed is B (the heaviest), so the pack writes
    B's own greedy text, token for token."""
    members = [load(n) for n in ("smollm2", "gemma3", "qwen-coder")]
    k = [m.name for m in members].index(b)
    fixed = [1.0 if i == k else 0.0 for i in range(3)]
    for prompt in ("The capital of France is Paris. The capital of Italy is", "東京は日本の首都であり、"):
        own = Pack([members[k]]).generate([prompt], max_new_tokens=12)[0]
        fused = Pack(members, weighting="fixed", weights=fixed).generate(
            [prompt], max_new_tokens=12)[0]
        assert fused.weights.seed == b and fused.text == own.text, (own.text, fused.text)


@pytest.mark.parametrize(("seed", "b", "prompt"), [
    ("smollm2", "gemma3", PROMPT),
    # gemma3 writes "\n\n" as one token; smollm2 reads "Ċ Ċ The" but would re-read a text-final "\n\n"
    # as "ĊĊ" and then write "2." (the regression behind the 0.617 figure).
    ("gemma3", "smollm2", "The capital of France is Paris. The capital of Italy is"),
    # gemma3 writes smollm2's own "ĠĠĠ" as "   "; smollm2 must go on to " if" (4 spaces), not read the
    # text before its last space as if the seed had written a whole indentation token.
    ("gemma3", "smollm2", "def fibonacci(n):"),
])
def test_member_reads_another_seeds_text_in_its_own_pieces_on_real_pair(seed: str, b: str, prompt: str) -> None:
    """The seed A writes B's own greedy text in A's tokens, one token at a time; B, reading along, ends up
    with exactly the tokens it wrote itself (not its canonical re-reading, nor A's segmentation)."""
    from lmfuse.ensemble.generate import Stream

    a, bm = load(seed), load(b)
    alone = Stream(Pack([bm]), prompt, max_new_tokens=16)
    text = "".join(alone)
    own = alone.readers[0].ids[len(alone.readers[0].head):]
    pack = Pack([a, bm], weighting="fixed", seed_member=a.name, weights=[0.0, 1.0])
    reader = Stream(pack, prompt, max_new_tokens=4).readers[1]
    surfaces = pack.vocab.lexicon(0).surfaces
    written = b""
    for t in a.encode(text).ids:
        written += surfaces[t]
        assert drive(reader, reader.read(written)) is not None
    assert reader.ids[len(reader.head):][: len(own)] == own, (text, own, reader.ids[len(reader.head):])


@pytest.mark.parametrize("weighting", ["packllm-opt", "uniform"])
def test_fused_code_does_not_loop_on_blank_indented_lines(weighting: str) -> None:
    """Regression: with gemma3 as the seed (it writes indentation as its own token), smollm2 and qwen-coder
    read a text ending in indentation as one whitespace token and voted for a newline, and the pack wrote
    ``"\\n    "`` over and over (uniform from the first line; packllm-opt after two)."""
    pack = Pack([load(n) for n in ("smollm2", "gemma3", "qwen-coder")], weighting=weighting)
    gen = pack.generate(["def quicksort(xs):"], max_new_tokens=40)[0]
    assert "\n    \n    \n" not in gen.text, gen.text
    assert gen.text.count("return") >= 1, gen.text


EXACT_TEXTS = [
    "When the river froze that winter, the children learned to skate below the mill. Größere Städte, 日本語 😀.",
    "def get(self, key: str) -> int | None:\n    if key not in self._data:\n        return None\n\n\treturn 42\n",
]


def test_one_hot_pack_scores_each_real_member_exactly_whatever_the_others() -> None:
    """All weight on member B, the others present: the pack's log-prob of a text is B's own (its token
    log-likelihood, as it scores the text alone) within 0.5%, for every member and every kind of text here
    (the full sweep over kinds and ordered pairs is `benchmarks/exact.py --parts fidelity`)."""
    from lmfuse.eval.member_scorer import MemberScorer
    from lmfuse.eval.pack_scorer import pack_scorer

    members = [load(name) for name in ("smollm2", "gemma3", "qwen-coder")]
    for b, member in enumerate(members):
        weights = [1.0 if k == b else 0.0 for k in range(len(members))]
        pack = Pack(members, weighting="fixed", weights=weights)
        fused = pack_scorer(pack, ["fixed"]).text_logprob(EXACT_TEXTS)["pack[fixed]"]
        own = MemberScorer(member).text_logprob(EXACT_TEXTS)[member.name]
        for text, f, o in zip(EXACT_TEXTS, fused, own, strict=True):
            assert abs(f - o) <= 0.005 * abs(o), (member.name, text[:30], f, o)


def test_batched_decoding_equals_one_prompt_at_a_time_on_the_default_pack() -> None:
    """Eight prompts of mixed lengths and kinds, decoded together (each member's forward passes batched over
    them, the members in parallel), write what each writes alone."""
    members = [load(n) for n in ("smollm2", "gemma3", "qwen-coder")]
    prompts = ["def fibonacci(n):\n", "The capital of France is Paris. The capital of Italy is",
               "東京は日本の首都であり、", "Q: What is 17 * 3?\nA:", "- apples\n- pears\n-",
               "Once upon a time, in a small village by the sea, there lived an old fisherman who",
               "import numpy as np\n\nx = np.", "Dear Sir or Madam,\n\nI am writing to"]
    pack = Pack(members)
    batched = pack.generate(prompts, max_new_tokens=12)
    for prompt, got in zip(prompts, batched, strict=True):
        (alone,) = pack.generate([prompt], max_new_tokens=12)
        assert (got.text, got.weights.seed) == (alone.text, alone.weights.seed), prompt
