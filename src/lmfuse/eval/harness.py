"""lmfuse as a model of lm-evaluation-harness (``lm-eval``): one member alone, or a pack with its weighting.

    lmfuse lm-eval run --model lmfuse --model_args pack=default weighting=packllm-opt --tasks arc_easy
    lm_eval.simple_evaluate(model=HarnessModel(model="smollm2+gemma3"), tasks=[...])

Importing this module registers the model as ``lmfuse`` in lm-eval's registry (lm-eval's own CLI has no plugin
discovery, hence ``lmfuse lm-eval``, which imports it and hands every argument to lm-eval's CLI).

Requests map onto the `Scorer` the rest of evaluation uses, so every number is the one ``lmfuse eval`` gives
for the same text: ``loglikelihood`` is ``Scorer.loglikelihood_many`` (``batch_size`` contexts per call, the
options of one context read after it once), ``loglikelihood_rolling`` is ``Scorer.text_logprob`` (a pack fits its weights on the
text itself, as ``lmfuse eval --fit-on text`` does), ``generate_until`` is ``Pack.generate`` (greedy, or
sampling with lm-eval's ``temperature`` / ``top_p``, stop at ``until``, at most ``max_gen_toks`` seed tokens).
Each request's member weights are kept (`weight_log`) and written to ``weights_out`` as JSON lines.

Model arguments carry the names of ``lmfuse eval`` and `Pack` (lists are joined with ``+``, since lm-eval
splits arguments at commas): see `ARGUMENTS`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from lmfuse.errors import InputError
from lmfuse.models.member import Member

ARGUMENTS = {
    "model": "members by zoo name, directory, .gguf file or hub id, joined with '+'; one member is evaluated alone",
    "pack": "'default': the default pack (instead of model)",
    "weighting": "weighting strategy of the pack (default packllm-opt)",
    "fusion": "fusion rule: product or mixture (default product)",
    "alignment": "exact (default: each member read as its byte-level model) or mined (PackLLM's token-level "
                 "fusion over a seed vocabulary; scoring only, no generate_until)",
    "nll_norm": "NLL normalisation for NLL-based weights: byte or token (default byte)",
    "weights": "member weights for weighting=fixed, joined with '+'",
    "tau": "temperature of packllm-sim (default 1)",
    "seed_member": "fix the member whose tokens generation emits (default: the largest weight)",
    "dtype": "weights dtype: float32, bfloat16, float16 (default float32)",
    "window": "rolling-window tokens for loglikelihood_rolling (default 2048)",
    "weights_out": "file to write each request's member weights to (JSON lines)",
    "batch_size": "contexts (with their options) read per forward pass; 'auto' means 8 (default 1)",
    "max_batch_size": "lm-eval's largest batch size (accepted)",
    "device": "lm-eval's device (accepted; members load where `lmfuse` puts them)",
}


@register_model("lmfuse")
class HarnessModel(LM):
    def __init__(self, model: str | None = None, pack: str | None = None, weighting: str = "packllm-opt",
                 fusion: str = "product", alignment: str = "exact", nll_norm: str = "byte",
                 weights: str | float | None = None,
                 tau: float = 1.0, seed_member: str | None = None, dtype: str = "float32", window: int = 2048,
                 weights_out: str | None = None, members: Sequence[Member] | None = None, batch_size: Any = 1,
                 max_batch_size: Any = None, device: Any = None, **unknown: Any) -> None:
        super().__init__()
        _refuse_unknown(unknown)
        from lmfuse.ensemble import Pack
        from lmfuse.eval.member_scorer import MemberScorer
        from lmfuse.eval.pack_scorer import pack_scorer

        loaded = list(members) if members is not None else _load(model, pack, dtype)
        fixed = _numbers(weights) if weights is not None else None
        # Members load (and fail) here, before lm-eval builds a single request.
        self.pack = Pack(loaded, weighting=weighting, fusion=fusion, alignment=alignment, seed_member=seed_member,
                         nll_norm=nll_norm, tau=float(tau), weights=fixed)
        if len(loaded) == 1:
            self.scorer: Any = MemberScorer(loaded[0], window=int(window))
            self.system = loaded[0].name
        else:
            self.scorer = pack_scorer(self.pack, [weighting], window=int(window))
            self.system = f"pack[{weighting}]"
        self.weights_out = Path(weights_out) if weights_out else None
        self.batch_size = _batch_size(batch_size)
        self.weight_log: list[dict[str, Any]] = []

    # ---- lm-eval's three requests -------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per request. Requests with the same context (the
        options of one question) are scored in one call. ``is_greedy`` (what lm-eval's ``acc`` of a single
        continuation, as in LAMBADA, reads) is whether greedy decoding from the context writes the
        continuation; it is decoded only for a context with one continuation (multiple choice ignores it)."""
        by_context: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_context.setdefault(req.args[0], []).append(i)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        contexts = list(by_context.items())
        with tqdm(total=len(contexts), desc="lmfuse loglikelihood", disable=disable_tqdm) as bar:
            for b in range(0, len(contexts), self.batch_size):
                batch = contexts[b : b + self.batch_size]
                results = self.scorer.loglikelihood_many([(c, [requests[i].args[1] for i in idx]) for c, idx in batch])
                weights = self.scorer.batch_weights() if hasattr(self.scorer, "batch_weights") else []
                for j, ((context, idx), scores) in enumerate(zip(batch, results, strict=True)):
                    self._log("loglikelihood", context, [requests[i] for i in idx],
                              weights=weights[j].get(self.system, {}) if j < len(weights) else {})
                    for i, score in zip(idx, scores[self.system], strict=True):
                        cont = requests[i].args[1]
                        greedy = self._is_greedy(context, cont) if len(idx) == 1 else False
                        out[i] = (float(score), greedy)
                        self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
                bar.update(len(batch))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, desc="lmfuse loglikelihood_rolling", disable=disable_tqdm):
            (text,) = req.args
            out.append(float(self.scorer.text_logprob([text])[self.system][0]))
            self._log("loglikelihood_rolling", text, [req])
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, out[-1])
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="lmfuse generate_until", disable=disable_tqdm):
            context, kwargs = req.args
            gen = self.pack.generate([context], **_generation_options(dict(kwargs)))[0]
            out.append(gen.text)
            self._log("generate_until", context, [req], gen.weights.as_dict())
            self.cache_hook.add_partial("generate_until", req.args, gen.text)
        return out

    # ---- helpers ------------------------------------------------------------------------------------
    def _is_greedy(self, context: str, continuation: str) -> bool:
        if not context:
            return False
        stream = self.pack.stream(context, max_new_tokens=max(1, len(continuation.encode("utf-8"))))
        text = ""
        for piece in stream:
            text += piece
            if len(text) >= len(continuation) or not continuation.startswith(text):
                break
        return text.startswith(continuation)

    def _log(self, kind: str, context: str, reqs: list[Any], report: dict[str, Any] | None = None,
             weights: dict[str, float] | None = None) -> None:
        """Keep the member weights that scored these requests (as ``lmfuse eval`` keeps them per example)."""
        if report is not None:
            weights = {m["name"]: m["weight"] for m in report["members"]}
        elif weights is None:
            explain = getattr(self.scorer, "last_weights", None)
            weights = explain().get(self.system, {}) if explain else {}
        meta = reqs[0].metadata if reqs and reqs[0].metadata else (None, None, None)
        entry = {"request": kind, "task": meta[0], "doc_id": meta[1], "system": self.system, "weights": weights,
                 "context_chars": len(context)}
        self.weight_log.append(entry)
        if self.weights_out is not None:
            self.weights_out.parent.mkdir(parents=True, exist_ok=True)
            with self.weights_out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")


def _batch_size(value: Any) -> int:
    """lm-eval's ``batch_size``: a positive number, or ``auto`` (8 here)."""
    text = str(value)
    if text.startswith("auto"):
        return 8
    try:
        size = int(text)
    except ValueError:
        raise InputError(f"batch_size must be a positive integer or 'auto'; got {value!r}") from None
    if size < 1:
        raise InputError(f"batch_size must be >= 1; got {size}")
    return size


def _refuse_unknown(unknown: dict[str, Any]) -> None:
    if not unknown:
        return
    name = sorted(unknown)[0]
    close = difflib.get_close_matches(name, ARGUMENTS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InputError(f"unknown model argument {name!r} for model 'lmfuse'{hint}; valid: {', '.join(ARGUMENTS)}")


def _numbers(value: str | float) -> list[float]:
    try:
        return [float(x) for x in str(value).split("+")]
    except ValueError:
        raise InputError(f"weights must be numbers joined with '+' (0.2+0.8); got {value!r}") from None


def _load(model: str | None, pack: str | None, dtype: str) -> list[Member]:
    from lmfuse.models.load import load_member

    if pack is not None and model is not None:
        raise InputError("give model=NAME+NAME... or pack=default, not both")
    if pack is not None:
        from lmfuse.models import zoo
        from lmfuse.registry import check_choice

        check_choice(pack, ["default"], "pack")
        names = list(zoo.DEFAULT_PACK)
    elif model:
        names = [n for n in str(model).split("+") if n]
    else:
        raise InputError("model 'lmfuse' needs model=NAME[+NAME...] or pack=default")
    return [load_member(n, dtype=dtype) for n in names]


def _generation_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's generation arguments as `Pack.generate`'s: ``until`` -> ``stop``, ``max_gen_toks`` ->
    ``max_new_tokens``; greedy unless ``do_sample`` (or, without it, a temperature above 0), as lm-eval's
    Hugging Face model reads them. Arguments `Pack.generate` has no counterpart for are refused by name."""
    until = kwargs.pop("until", [])
    stop = [until] if isinstance(until, str) else list(until or [])
    max_new = int(kwargs.pop("max_gen_toks", 256))
    temperature = float(kwargs.pop("temperature", 0.0))
    sample = kwargs.pop("do_sample", None)
    sample = temperature > 0 if sample is None else bool(sample)
    top_p = float(kwargs.pop("top_p", 1.0))
    seed = kwargs.pop("seed", None)
    if kwargs:
        raise InputError(f"model 'lmfuse' cannot honour generation argument(s) {', '.join(sorted(kwargs))}; "
                         "supported: until, max_gen_toks, do_sample, temperature, top_p, seed")
    return {"max_new_tokens": max_new, "temperature": (temperature or 1.0) if sample else 0.0, "top_p": top_p,
            "stop": stop, **({"seed": int(seed)} if seed is not None else {})}
