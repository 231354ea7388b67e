"""Instruction data (prompt + reference response) and per-model chat templates, for ProFuser.

**Examples.** ``load_examples`` reads a JSONL / JSON / parquet / CSV file, a directory of them, a
``datasets.Dataset``, a dataset directory saved with ``save_to_disk``, or ``asset:<name>/<file>`` (a
pinned data asset of ``lmfuse.assets``, e.g. ``asset:gsm8k/test.jsonl``), with configurable prompt and
response columns. Examples are taken in file order after ``offset``, ``limit`` at most; an example
whose prompt + response is longer than ``max_chars`` characters is dropped (so every row fits every
member's context), and one with an empty prompt or response too.

**Templates, per model.** Each member renders the prompt with its *own* chat template (``render_prompt``):
the tokenizer's template (``auto``), a Jinja file, or — for a tokenizer without one, or ``plain`` —
the plain format::

    System: <system>          (only when a system message is given)
    User: <prompt>
    Assistant:
    <response>

A leading BOS text is dropped from a rendered template, because every member reads its prefix token
(BOS, else EOS) before the text anyway.

**The response span.** The response text is the same in every member's row; the prompt is not. Each
member encodes the rendered prompt and the response *separately* and reads ``[prefix] + prompt ids +
response ids``. So no token straddles the boundary (a tokenizer would otherwise merge the prompt's last
characters with the response's first ones, differently in each member), the response tokens of a member
are exactly ``encode(response)`` with offsets relative to the response, and every member aligns on the
identical response text — the FuseLLM alignment applies unchanged. This is also how generation sees it:
a model starts a new token right after the prompt. The loss and the CE that compares members cover
only response tokens; the prompt is context.

**End of turn.** The target is also trained to emit its end-of-turn token after the response (a CLM-only
position: no source predicts it in the target's vocabulary): ``end_of_turn_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfuse.errors import InputError
from lmfuse.fuse.corpus import load_files

PLAIN_STOP = "\nUser:"
"""Where a plain-format reply ends: the model starting the next user turn."""
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")
"""Tokens that close an assistant turn in common chat templates (ChatML, Gemma, Llama-3, Phi-3)."""
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Example:
    """One instruction example: the user's prompt and the reference response."""

    prompt: str
    response: str


def _dataset(source: str | Path | Any, split: str) -> Any:
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, str) and source.startswith("asset:"):
        source = asset_path(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"instruction data {str(source)!r} does not exist")
    if path.is_dir() and (path / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    kinds = {_BUILDERS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) != 1:
        raise InputError(f"instruction data {str(source)!r}: expected files of one kind among "
                         f"{sorted(_BUILDERS)}, found suffixes {sorted({p.suffix for p in files})}")
    (builder,) = kinds
    assert builder is not None  # None was refused above
    return load_files(builder, files, split, f"instruction data {str(source)!r}")


def asset_path(spec: str) -> Path:
    """``asset:<name>/<file>`` -> that file of the fetched data asset (``lmfuse.assets.DATA_ASSETS``)."""
    from lmfuse.assets import DATA_ASSETS, fetch_data
    from lmfuse.registry import suggest

    name, _, rel = spec[len("asset:"):].partition("/")
    if name not in DATA_ASSETS:
        raise InputError(suggest(name, list(DATA_ASSETS), "data asset"))
    return fetch_data(DATA_ASSETS[name]) / rel


def load_examples(source: str | Path | Any, prompt_field: str = "prompt", response_field: str = "response",
                  split: str = "train", max_chars: int | None = None, offset: int = 0,
                  limit: int | None = None) -> list[Example]:
    """The examples every ProFuser stage iterates over, in order (see the module doc)."""
    ds = _dataset(source, split)
    for column in (prompt_field, response_field):
        if column not in ds.column_names:
            raise InputError(f"instruction data has no column {column!r}; columns: {', '.join(ds.column_names)}")
    out = []
    for prompt, response in zip(ds[prompt_field], ds[response_field], strict=True):
        if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.strip() or not response.strip():
            continue
        if max_chars is not None and len(prompt) + len(response) > max_chars:
            continue
        out.append(Example(prompt, response))
    out = out[offset:]
    return out[:limit] if limit is not None else out


def chat_template(tokenizer: Any, choice: str = "auto") -> str | None:
    """The Jinja chat template a member uses: its own (``auto``), a file's, or None for the plain format."""
    if choice == "plain":
        return None
    if choice == "auto":
        template = getattr(tokenizer, "chat_template", None)
        return template if isinstance(template, str) and template else None
    path = Path(choice).expanduser()
    if not path.is_file():
        raise InputError(f"chat_template {choice!r} is neither 'auto', 'plain' nor a template file")
    return path.read_text()


def render_prompt(tokenizer: Any, prompt: str, system: str = "", template: str | None = None) -> str:
    """The text a member reads before the response (the generation cue included)."""
    if template is None:
        head = f"System: {system}\n" if system else ""
        return f"{head}User: {prompt}\nAssistant:\n"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return str(text)


def end_of_turn_id(tokenizer: Any, templated: bool) -> int | None:
    """The token that ends an assistant reply: a chat template's end-of-turn token, else EOS."""
    if templated:
        vocab = tokenizer.get_vocab()
        for token in END_OF_TURN_TOKENS:
            if token in vocab:
                return int(vocab[token])
    eos = tokenizer.eos_token_id
    return int(eos) if eos is not None else None


def stop_ids(tokenizer: Any, templated: bool) -> list[int]:
    """Token ids that end a generated reply (the end-of-turn token and EOS)."""
    ids = {end_of_turn_id(tokenizer, templated), tokenizer.eos_token_id}
    return sorted(int(i) for i in ids if i is not None)


def cut_reply(text: str, templated: bool) -> str:
    """A decoded reply up to the plain format's next user turn, without surrounding whitespace.

    The plain prompt ends with a newline, so a reply that opens a new user turn at once starts with
    ``"User:"`` itself (Gemma-3-270M, a base model, does this): that reply is empty.
    """
    if not templated:
        text = ("\n" + text)
        text = text[: text.index(PLAIN_STOP)] if PLAIN_STOP in text else text
    return text.strip()
