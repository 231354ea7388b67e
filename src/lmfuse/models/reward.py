"""A reward model: any HF ``AutoModelForSequenceClassification`` directory, scoring (prompt, response) pairs.

ProFuser's ``reward-model`` reward (`lmfuse.fuse.rewards`) builds one from its recipe entry; this module is
the only place it is loaded and run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class RewardModel:
    """A sequence-classification model and its tokenizer (pad token set: batches are padded)."""

    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    model: Any  # transformers.PreTrainedModel (sequence classification)

    @classmethod
    def load(cls, path: Path) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        return cls(tok, model)

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int, max_length: int) -> np.ndarray:
        """float64 ``[N]``: the logit of each pair when the model has one label, else the log-probability of
        its last label. A pair is rendered with the tokenizer's own chat template when it has one, else
        given to the tokenizer as a text pair; either is cut to ``max_length`` tokens."""
        tok = self.tokenizer
        template = getattr(tok, "chat_template", None)
        templated = isinstance(template, str) and bool(template)
        out: list[np.ndarray] = []
        for b in range(0, len(prompts), batch_size):
            ps, rs = list(prompts[b : b + batch_size]), list(responses[b : b + batch_size])
            if templated:
                texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                                 tokenize=False) for p, r in zip(ps, rs, strict=True)]
                enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                          add_special_tokens=False)
            else:
                enc = tok(ps, rs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
            value = logits[:, 0] if logits.shape[-1] == 1 else torch.log_softmax(logits, dim=-1)[:, -1]
            out.append(value.cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0, np.float64)
