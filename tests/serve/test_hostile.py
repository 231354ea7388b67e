"""Generated hostile requests against the real pack (two toy members): never a 5xx, always an OpenAI-style
error body for a 4xx, and the server stays healthy (issue 16)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import MODEL

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
          "stop", "stream", "n", "stream_options", "logprobs", "user", "role", "content", "type", "text"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", MODEL, "\ud800", "\udfff x", "user", "text", "assistant", "💥", "\x00", "A" * 300]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)), max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
                                optional={"content": VALUES})
BODIES = st.one_of(
    VALUES,
    st.fixed_dictionaries({"model": st.sampled_from([MODEL, "other", ""])},
                          optional={"prompt": VALUES, "max_tokens": VALUES, "temperature": VALUES, "seed": VALUES,
                                    "stop": VALUES, "stream": st.booleans(), "top_p": VALUES}),
    st.fixed_dictionaries({"model": st.just(MODEL), "messages": st.lists(MESSAGE, max_size=3)},
                          optional={"max_tokens": st.integers(-3, 40), "seed": VALUES, "stream": st.booleans()}),
)
PATHS = st.sampled_from(["/v1/completions", "/v1/chat/completions"])
SEEN = {"requests": 0}


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])
@given(path=PATHS, body=BODIES, raw=st.booleans())
def test_no_hostile_body_gets_a_5xx(toy_server: str, path: str, body: Any, raw: bool) -> None:
    data = json.dumps(body, allow_nan=True).encode()  # lone surrogates travel escaped, as JSON allows
    if raw:  # the same bytes cut short: malformed JSON
        data = data[: max(1, len(data) // 2)]
    r = httpx.post(toy_server + path, content=data, headers={"Content-Type": "application/json"}, timeout=60)
    SEEN["requests"] += 1
    assert r.status_code < 500, (path, data[:200], r.text[:300])
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in r.text


def test_the_server_is_healthy_after_the_hostile_requests(toy_server: str) -> None:
    assert SEEN["requests"] >= 200 or SEEN["requests"] == 0  # 0: run alone (-k)
    health = httpx.get(f"{toy_server}/health").json()
    assert health["pending"] == 0
    ok = httpx.post(f"{toy_server}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")
