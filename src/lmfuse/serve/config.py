"""Server settings: one frozen dataclass, validated once, shared by the app, the batcher and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lmfuse.errors import InputError

API_KEY_ENV = "LMFUSE_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    """How `create_app` serves a pack.

    ``max_pending`` counts requests admitted and not finished (waiting in the queue or being decoded);
    one more gets 429. ``max_batch`` is how many waiting requests the worker takes per call into the pack
    (1 = one at a time). ``batch_window_ms`` is how long the worker waits for company once a first
    request arrives while the pack is idle (requests that arrive while it is busy batch up anyway).
    A request without ``max_tokens`` gets ``min(default_max_tokens, max_tokens_limit)``.
    """

    model_name: str = "lmfuse-pack"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_tokens_limit: int = 512
    default_max_tokens: int = 64
    max_batch: int = 8
    max_pending: int = 64
    batch_window_ms: float = 2.0
    max_body_bytes: int = 1 << 20
    max_stop: int = 4
    chat_template_member: str | None = None
    # A prompt holds the pack's thread while every member reads it: a 900 KB prompt took 8 s. Longer
    # prompts get a 400 naming the limit (tokens as the longest member tokenization counts them).
    max_prompt_chars: int = 100_000
    max_prompt_tokens: int = 16_384

    def __post_init__(self) -> None:
        positive = {"max_tokens_limit": self.max_tokens_limit, "default_max_tokens": self.default_max_tokens,
                    "max_batch": self.max_batch, "max_pending": self.max_pending,
                    "max_body_bytes": self.max_body_bytes, "max_stop": self.max_stop,
                    "max_prompt_chars": self.max_prompt_chars, "max_prompt_tokens": self.max_prompt_tokens}
        for name, value in positive.items():
            if value < 1:
                raise InputError(f"serve: {name} must be >= 1; got {value}")
        if self.batch_window_ms < 0:
            raise InputError(f"serve: batch_window_ms must be >= 0; got {self.batch_window_ms}")
        if not self.model_name:
            raise InputError("serve: model_name must not be empty")
        if not 0 <= self.port <= 65535:
            raise InputError(f"serve: port must be in 0..65535; got {self.port}")

    @staticmethod
    def key_from_env(explicit: str | None) -> str | None:
        """The API key: the explicit one, else ``$LMFUSE_API_KEY``, else none (no authentication)."""
        return explicit or os.environ.get(API_KEY_ENV) or None
