"""``alignment="mined"``: the paper's token-level fusion over a seed vocabulary (`lmfuse.ensemble.mined`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from lmfuse.alignment import BYTE
from lmfuse.cli.pack_args import add_pack_arguments, pack_config
from lmfuse.ensemble import Pack, PackConfig
from lmfuse.ensemble.mined import SeedFusion, gathered
from lmfuse.ensemble.runs import read_examples
from lmfuse.errors import InputError
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.models.member import Member
from lmfuse.models.toy import build_model

CONTEXT, OPTIONS = "Whether 'tis nobler in the", [" mind", " heart to suffer"]
TEXT = "The quick brown fox jumps over the lazy dog."


def clone(member: Member, name: str) -> Member:
    return dataclasses.replace(member, name=name)


@pytest.fixture(scope="module")
def unpadded(tokenizers3: dict[str, Any]) -> Member:
    """A toy member whose logits are exactly as wide as its tokenizer (nothing to renormalise away)."""
    tok = tokenizers3["bytebpe"]
    model = build_model("gpt2", len(tok), seed=7, pad_to=1)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, key, getattr(tok, key))
    return Member(name="toy-unpadded", tokenizer=tok, model=model, source="toy")


def own_scores(member: Member, context: str, options: list[str]) -> list[float]:
    """The member's own log-prob of each option, its rows renormalised over its tokenizer's ids (the seed
    vocabulary: padded logit columns are not tokens)."""
    ((_, conts),) = read_examples(member, [(context, options)])
    size = len(member.tokenizer)
    out = []
    for run in conts:
        lp = run.rows[:, :size] - torch.logsumexp(run.rows[:, :size], -1, keepdim=True)
        out.append(float(lp.gather(-1, torch.as_tensor(run.ids)[:, None]).sum()))
    return out


def test_one_hot_on_the_seed_reproduces_its_own_token_logprobs(toy_members: dict[str, Member],
                                                                unpadded: Member) -> None:
    sp, bpe = toy_members["sentencepiece"], toy_members["bytebpe"]
    for seed, other in ((sp, bpe), (bpe, sp)):
        pack = Pack([other, seed], alignment="mined", weighting="fixed", weights=[0.0, 1.0], seed_member=seed.name)
        out = pack_scorer(pack, ["fixed"]).loglikelihood(CONTEXT, OPTIONS)
        assert out["pack[fixed]"] == pytest.approx(own_scores(seed, CONTEXT, OPTIONS), abs=1e-4)
    # Logits as wide as the tokenizer: the pack is the member's own column, for options and whole texts.
    pack = Pack([sp, unpadded], alignment="mined", weighting="fixed", weights=[0.0, 1.0], seed_member=unpadded.name)
    scorer = pack_scorer(pack, ["fixed"])
    out = scorer.loglikelihood(CONTEXT, OPTIONS)
    assert out["pack[fixed]"] == pytest.approx(out[unpadded.name], abs=1e-4)
    texts = scorer.text_logprob([TEXT])
    assert texts["pack[fixed]"] == pytest.approx(texts[unpadded.name], abs=1e-4)


@pytest.mark.parametrize("fusion", ["product", "mixture"])
def test_members_sharing_a_tokenizer_reproduce_the_single_member(toy_members: dict[str, Member],
                                                                 unpadded: Member, fusion: str) -> None:
    base = toy_members["sentencepiece"]
    single = pack_scorer(Pack([base], alignment="mined", weighting="uniform"), ["uniform"]).loglikelihood(
        CONTEXT, OPTIONS)["pack[uniform]"]
    assert single == pytest.approx(own_scores(base, CONTEXT, OPTIONS), abs=1e-4)
    pair = Pack([base, clone(base, "twin")], alignment="mined", fusion=fusion, weighting="fixed", weights=[0.3, 0.7])
    out = pack_scorer(pair, ["fixed", "uniform", "top1", "packllm-sim", "packllm-opt"]).loglikelihood(CONTEXT, OPTIONS)
    for system in ("pack[fixed]", "pack[uniform]", "pack[top1]", "pack[packllm-sim]", "pack[packllm-opt]"):
        assert out[system] == pytest.approx(single, abs=1e-4), system
    twins = Pack([unpadded, clone(unpadded, "twin")], alignment="mined", fusion=fusion, weighting="uniform")
    texts = pack_scorer(twins, ["uniform"]).text_logprob([TEXT])
    assert texts["pack[uniform]"] == pytest.approx(texts[unpadded.name], abs=1e-4)


def test_map_direction_and_input_translation_on_a_hand_made_case(toy_members: dict[str, Member]) -> None:
    """Seed byte-level BPE: its ``Ġthe`` and ``Ċ`` become the SentencePiece member's ``▁the`` and ``<0x0A>`` (by
    surface bytes), in the seed's segmentation; a seed byte token no WordPiece token spells reads as [UNK]."""
    bpe, sp, wp = toy_members["bytebpe"], toy_members["sentencepiece"], toy_members["wordpiece"]
    maps = SeedFusion(Pack([bpe, sp, wp], alignment="mined")).maps
    seed_table, sp_table = maps.table(0), maps.table(1)
    index = maps.index(0, 1)
    assert index.shape == (len(bpe.tokenizer),)  # one entry per *seed* id: seed -> member
    the, newline = bpe.tokenizer.convert_tokens_to_ids(["Ġthe", "Ċ"])
    sp_the, sp_newline = sp.tokenizer.convert_tokens_to_ids(["▁the", "<0x0A>"])
    assert (int(index[the]), int(index[newline])) == (sp_the, sp_newline)
    for s in torch.nonzero(index >= 0)[:, 0].tolist():  # every exact pair has the same surface
        if seed_table.surface[s] and sp_table.surface[int(index[s])] == seed_table.surface[s]:
            continue
        assert seed_table.kind[s] != BYTE  # byte tokens map only to the same bytes
    ids = bpe.encode(" the\n the").ids
    assert ids == [the, newline, the]
    assert maps.translate(0, 1, ids) == [sp_the, sp_newline, sp_the]  # not re-tokenized: one id per seed id
    byte_ids = [i for i in range(seed_table.size) if seed_table.kind[i] == BYTE]
    assert byte_ids and int(maps.index(0, 2)[byte_ids[0]]) == -1
    assert maps.translate(0, 2, byte_ids[:1]) == [wp.tokenizer.unk_token_id]
    # The output side gathers the member's own log-prob of its mapped id, renormalised over the seed's ids.
    rows = torch.log_softmax(torch.randn(2, sp.logits_width), -1)
    out = gathered(rows, index)
    norm = torch.logsumexp(rows[:, index[index >= 0]], -1)
    assert torch.allclose(out[:, the], rows[:, sp_the] - norm)


def test_gathered_distributions_sum_to_one_over_the_seed_vocabulary(toy_members: dict[str, Member]) -> None:
    """Logits padded wider than the tokenizer (``pad_to=64``) never become seed columns; unmapped ids are -inf."""
    members = [toy_members[f] for f in ("bytebpe", "sentencepiece", "wordpiece")]
    assert all(m.logits_width > len(m.tokenizer) for m in members)
    fusion = SeedFusion(Pack(members, alignment="mined"))
    for seed in range(3):
        ids = members[seed].encode(TEXT).ids
        reading = fusion.text_reading(seed, ids, members[seed].rows(ids), None)
        aligned = reading.aligned(fusion.maps, 0, len(ids))
        assert aligned.shape == (3, len(ids), len(members[seed].tokenizer))
        assert torch.allclose(torch.logsumexp(aligned, -1), torch.zeros(3, len(ids)), atol=1e-5)
        for k in range(3):
            assert bool(torch.isinf(aligned[k][:, fusion.maps.index(seed, k) < 0]).all())


def test_generation_and_unsupported_weightings_are_clear_errors(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], alignment="mined")
    for call in (lambda: pack.generate(["The quick"]), lambda: pack.stream("The quick"), pack.decoder):
        with pytest.raises(InputError, match="only scores"):
            call()
    with pytest.raises(InputError, match=r"last_weights"):  # not the exact fit's weights passed off as mined's
        pack.weights("The quick")
    for name in ("online", "demo-fit", "demo-fit-task"):
        with pytest.raises(InputError, match="uniform, fixed, top1, packllm-sim, packllm-opt"):
            pack_scorer(pack, ["uniform", name])
    pack.reconfigure(alignment="exact")
    assert pack.generate(["The quick"], max_new_tokens=2)[0].weights is not None


def test_config_validation_and_the_cli_flag() -> None:
    with pytest.raises(InputError, match=r"alignment 'minde'\. Did you mean 'mined'.*Valid: exact, mined"):
        PackConfig.of(alignment="minde")
    with pytest.raises(InputError, match="weighting 'online' is not one of the paper's"):
        PackConfig.of(alignment="mined", weighting="online")
    assert PackConfig.of().alignment == "exact"
    import argparse

    parser = argparse.ArgumentParser()
    add_pack_arguments(parser)
    assert pack_config(parser.parse_args(["--alignment", "mined", "--weighting", "top1"])).alignment == "mined"
    with pytest.raises(SystemExit):
        parser.parse_args(["--alignment", "bytes"])


def test_scorer_records_the_alignment_and_weights_on_the_seed_tokens(toy_members: dict[str, Member]) -> None:
    pack = Pack([toy_members["bytebpe"], toy_members["sentencepiece"]], alignment="mined")
    scorer = pack_scorer(pack, ["packllm-opt", "uniform", "top1"])
    assert scorer.provenance()["pack[packllm-opt]"]["alignment"] == "mined"
    out = scorer.loglikelihood_many([(CONTEXT, OPTIONS), ("To be", [])])
    assert all(math.isfinite(x) for x in out[0]["pack[packllm-opt]"]) and out[1]["pack[uniform]"] == []
    (weights, _) = scorer.batch_weights()
    assert sum(weights["pack[packllm-opt]"].values()) == pytest.approx(1.0)
    # The weights minimise the fused NLL per seed token of the context: no grid point does better.
    fusion = SeedFusion(pack)
    seed = fusion.choose_seed(pack.analyse(CONTEXT).nll)
    ids = pack.members[seed].encode(CONTEXT).ids
    problem = fusion.text_reading(seed, ids, pack.members[seed].rows(ids), None).problem(fusion.maps, "product")
    w = torch.tensor(list(weights["pack[packllm-opt]"].values()))
    grid = [torch.tensor([a / 20, 1 - a / 20]) for a in range(21)]
    assert float(problem.objective(w)) <= min(float(problem.objective(g)) for g in grid) + 1e-4
    with pytest.raises(InputError, match="context is empty, and packllm-opt"):
        scorer.loglikelihood("", [" empty"])
    assert all(math.isfinite(x) for x in pack_scorer(pack, ["uniform"]).loglikelihood("", [" empty"])["pack[uniform]"])
