"""Bad input answers 4xx with an OpenAI error body, never a traceback, and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from lmfuse.errors import InputError
from lmfuse.serve import ServeConfig, ServerThread

from .helpers import MODEL, SlowPack, client

GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    with ServerThread(SlowPack(), ServeConfig(port=0, max_tokens_limit=16, max_body_bytes=4096)) as url:
        yield url


def assert_error_body(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    if param is not None:
        assert err["param"] == param
    return dict(err)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": True}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": []}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": 42}, None),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -0.5}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 3}, "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "stream": True}, "prompt"),
    ("/v1/completions", [1, 2], None),
    ("/v1/completions", {"model": MODEL, "prompt": ["a"] * 65}, "prompt"),  # more than max_pending (64)
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": ""}]}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, None),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}, "messages"),
    ("/v1/chat/completions", {**GOOD_CHAT, "max_completion_tokens": 17}, "max_completion_tokens"),
])
def test_bad_request_is_400(fake_server: str, path: str, body: Any, param: str | None) -> None:
    assert_error_body(httpx.post(fake_server + path, json=body), 400, param)


def test_malformed_json_is_400_and_the_server_keeps_serving(fake_server: str) -> None:
    r = httpx.post(f"{fake_server}/v1/chat/completions", content=b'{"model": "lmfuse-pack", "messages": [',
                   headers={"Content-Type": "application/json"})
    assert assert_error_body(r, 400)["code"] == "invalid_json"
    r = httpx.post(f"{fake_server}/v1/completions", content=b"\xff\xfe", headers={"Content-Type": "application/json"})
    assert_error_body(r, 400)
    assert httpx.post(f"{fake_server}/v1/chat/completions", json=GOOD_CHAT).status_code == 200


def test_unknown_model_is_404_model_not_found(fake_server: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(fake_server).completions.create(model="gpt-5", prompt="x")
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert "lmfuse-pack" in e.value.body["message"]  # type: ignore[index]


def test_body_over_the_limit_is_413(fake_server: str) -> None:
    r = httpx.post(f"{fake_server}/v1/completions", json={"model": MODEL, "prompt": "x" * 5000})
    assert assert_error_body(r, 413)["code"] == "body_too_large"


def test_unknown_route_has_an_openai_error_body(fake_server: str) -> None:
    assert_error_body(httpx.get(f"{fake_server}/v1/nothing"), 404)


def test_pack_input_error_is_400_and_a_crash_is_a_bare_500() -> None:
    with ServerThread(SlowPack(fail=InputError("prompt has no tokens for member 'x'")), ServeConfig(port=0)) as url:
        err = assert_error_body(httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}), 400)
        assert "no tokens" in err["message"]
    with ServerThread(SlowPack(fail=RuntimeError("secret /home/path detail")), ServeConfig(port=0)) as url:
        r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"})
        err = assert_error_body(r, 500)
        assert "secret" not in r.text and err["type"] == "server_error"
        assert httpx.get(f"{url}/health").json()["pending"] == 0


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"model": MODEL, "prompt": "x", "seed": 2**70, "temperature": 1.0}, "seed"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "seed": -1}, "seed"),
    ("/v1/completions", {"model": MODEL, "prompt": "ab\ud800cd"}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": ["ok", "ab\udfffcd"]}, "prompt.1"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": "\ud800"}, None),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi \ud83d"}]}, None),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "\udc00"}]}]}, None),
])
def test_client_values_the_pack_cannot_use_are_400_on_the_real_pack(
        toy_server: str, path: str, body: Any, param: str | None) -> None:
    """A seed beyond 64 bits and lone surrogates (legal JSON, not UTF-8) reached torch and the tokenizers
    and came back as 500s; they are refused by name, and the server keeps serving."""
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as "\\ud800", as clients send it
    err = assert_error_body(httpx.post(toy_server + path, content=raw, headers={"Content-Type": "application/json"}),
                            400)
    if param is not None:
        assert err["param"] == param
    assert httpx.post(f"{toy_server}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}
                      ).status_code == 200


def test_deeply_nested_json_is_400_not_a_recursion_error(fake_server: str) -> None:
    body = b'{"model": "lmfuse-pack", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with ServerThread(SlowPack(), ServeConfig(port=0, max_body_bytes=1 << 20)) as url:
        r = httpx.post(f"{url}/v1/completions", content=body, headers={"Content-Type": "application/json"})
        assert "nested too deeply" in assert_error_body(r, 400)["message"]
        assert httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 200


def test_an_unknown_registry_name_is_a_client_error() -> None:
    from lmfuse.errors import LmfuseError
    from lmfuse.registry import UnknownNameError
    from lmfuse.serve.app import as_api_error

    err = as_api_error(UnknownNameError("unknown weighting 'packlm'. Did you mean 'packllm-opt'?"))
    assert err.status == 400 and "packllm-opt" in err.message and issubclass(UnknownNameError, LmfuseError)


def test_prompts_over_the_length_limits_are_400_before_the_pack_reads_them(toy_pack: Any) -> None:
    config = ServeConfig(port=0, max_prompt_chars=2000, max_prompt_tokens=50, max_tokens_limit=8)
    with ServerThread(toy_pack, config) as url:
        long = {"model": MODEL, "prompt": "word " * 1000}
        err = assert_error_body(httpx.post(f"{url}/v1/completions", json=long), 400, "prompt")
        assert err["code"] == "prompt_too_long" and "5,000 characters; the limit is 2,000" in err["message"]
        tokens = {"model": MODEL, "prompt": "x y z " * 60}  # 360 characters, hundreds of tokens
        err = assert_error_body(httpx.post(f"{url}/v1/completions", json=tokens), 400, "prompt")
        assert "tokens for member" in err["message"] and "the limit is 50" in err["message"]
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 1000}]}
        assert assert_error_body(httpx.post(f"{url}/v1/chat/completions", json=chat), 400, "messages")["code"] == \
            "prompt_too_long"
        assert httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
                          ).status_code == 200


def test_a_non_text_content_part_is_named_in_the_400(fake_server: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    err = assert_error_body(httpx.post(f"{fake_server}/v1/chat/completions", json=body), 400)
    assert "content part type 'image_url' is not supported" in err["message"]
    text_only = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert httpx.post(f"{fake_server}/v1/chat/completions", json=text_only).status_code == 200
