"""Server settings: one frozen section (`lmfuse.config`), validated once, shared by the app, the batcher and
the CLI; a bad value is one `InputError` naming the setting, the value and the bound (``serve: max_batch:
input should be greater than or equal to 1 (got 0)``)."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field

from lmfuse.config import section

API_KEY_ENV = "LMFUSE_API_KEY"
Positive = Annotated[int, Field(ge=1)]


@section(where="serve", prefix=True)
class ServeConfig:
    """How `create_app` serves a pack.

    ``max_pending`` counts requests admitted and not finished (waiting in the queue or being decoded);
    one more gets 429. ``max_batch`` is how many waiting requests the worker takes per call into the pack
    (1 = one at a time). ``batch_window_ms`` is how long the worker waits for company once a first
    request arrives while the pack is idle (requests that arrive while it is busy batch up anyway).
    A request without ``max_tokens`` gets ``min(default_max_tokens, max_tokens_limit)``.
    """

    model_name: Annotated[str, Field(min_length=1)] = "lmfuse-pack"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    api_key: str | None = Field(default=None, repr=False)  # never in a log line or a traceback
    max_tokens_limit: Positive = 512
    default_max_tokens: Positive = 64
    max_batch: Positive = 8
    max_pending: Positive = 64
    batch_window_ms: Annotated[float, Field(ge=0)] = 2.0
    max_body_bytes: Positive = 1 << 20
    max_stop: Positive = 4
    chat_template_member: str | None = None
    # A prompt holds the pack's thread while every member reads it: a 900 KB prompt took 8 s. Longer
    # prompts get a 400 naming the limit (tokens as the longest member tokenization counts them).
    max_prompt_chars: Positive = 100_000
    max_prompt_tokens: Positive = 16_384

    @staticmethod
    def key_from_env(explicit: str | None) -> str | None:
        """The API key: the explicit one, else ``$LMFUSE_API_KEY``, else none (no authentication)."""
        return explicit or os.environ.get(API_KEY_ENV) or None
