"""The OpenAI-compatible HTTP app around a pack: `create_app(pack, config)`.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both streaming with server-sent events
or not), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (no key needed). Every completion
carries the pack's weights for that request in an extra ``lmfuse`` field::

    "lmfuse": {"weights": WeightReport.as_dict(), "seed_member": "<member whose vocabulary was decoded>"}

(on the first and the last chunk of a stream). Errors have OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; unexpected failures answer a generic 500 and are
logged on the server, never sent as a traceback.

The pack only needs ``generate``, ``stream`` and ``names`` (see `lmfuse.ensemble.Pack`); ``members``,
when present, gives chat templates and ``usage.prompt_tokens``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmfuse.errors import LmfuseError
from lmfuse.serve.batcher import Batcher, Completed, Job, Params
from lmfuse.serve.chat import render, template_tokenizer
from lmfuse.serve.config import ServeConfig
from lmfuse.serve.errors import APIError, bad_request, error_body
from lmfuse.serve.schemas import ChatRequest, CompletionRequest, max_tokens, parse, stop_list

log = logging.getLogger("lmfuse.serve")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def create_app(pack: Any, config: ServeConfig | None = None) -> FastAPI:
    """A FastAPI app serving ``pack``; the batcher starts and stops with the app's lifespan."""
    config = config or ServeConfig()
    batcher = Batcher(pack, config)
    chat_tokenizer = template_tokenizer(pack, config.chat_template_member)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="lmfuse", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.config = batcher, config
    _install_error_handlers(app)

    def authorise(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != config.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {config.model_name!r}",
                           "invalid_request_error", "model", "model_not_found")

    def params(req: Any, extra_stop: Sequence[str] = ()) -> Params:
        stops = stop_list(req.stop, config.max_stop)
        return Params(max_tokens(req, config.default_max_tokens, config.max_tokens_limit), req.temperature,
                      req.top_p, tuple(dict.fromkeys([*stops, *extra_stop])), req.seed)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_name, "members": list(pack.names),
                "pending": batcher.pending, "max_pending": config.max_pending, "max_batch": config.max_batch}

    def model_card() -> dict[str, Any]:
        return {"id": config.model_name, "object": "model", "created": 0, "owned_by": "lmfuse",
                "lmfuse": {"members": list(pack.names)}}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorise(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        authorise(request)
        check_model(model_id)
        return model_card()

    def check_prompt_length(text: str, param: str) -> None:
        if len(text) > config.max_prompt_chars:
            raise bad_request(f"the prompt has {len(text):,} characters; the limit is {config.max_prompt_chars:,}",
                              param=param, code="prompt_too_long")
        for member in getattr(pack, "members", []):
            n = len(member.tokenizer(text, add_special_tokens=False)["input_ids"])
            if n > config.max_prompt_tokens:
                raise bad_request(f"the prompt has {n:,} tokens for member {member.name!r}; the limit is "
                                  f"{config.max_prompt_tokens:,}", param=param, code="prompt_too_long")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        authorise(request)
        req = parse(CompletionRequest, await read_json(request, config.max_body_bytes))
        check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or any(not p for p in prompts):
            raise bad_request("prompt must be a non-empty string or a non-empty list of non-empty strings",
                              param="prompt")
        if len(prompts) > config.max_pending:  # could never be admitted: not a "retry later"
            raise bad_request(f"at most {config.max_pending} prompts per request; got {len(prompts)}",
                              param="prompt")
        for text in prompts:
            check_prompt_length(text, "prompt")
        p = params(req)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": config.model_name}
        if req.stream:
            if len(prompts) > 1:
                raise bad_request("streaming takes a single prompt", param="prompt")

            def chunk(piece: str, done: Completed | None, extra: dict[str, Any] | None) -> dict[str, Any]:
                choice = {"index": 0, "text": piece, "logprobs": None,
                          "finish_reason": done.finish_reason if done else None}
                return {**base, "choices": [choice], **(extra or {})}

            return await stream_response(request, batcher, prompts[0], p, chunk, include_usage(req), base)
        results = await run_jobs(request, batcher, prompts, p)
        choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                   for i, r in enumerate(results)]
        extra = lmfuse_field(results[0]) if len(results) == 1 else {
            "lmfuse": {"per_prompt": [lmfuse_field(r)["lmfuse"] for r in results]}}
        return JSONResponse({**base, "choices": choices, "usage": usage(results), **extra})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorise(request)
        req = parse(ChatRequest, await read_json(request, config.max_body_bytes))
        check_model(req.model)
        if not req.messages:
            raise bad_request("messages must hold at least one message", param="messages")
        conversation = [(m.role, m.text()) for m in req.messages]
        if not any(text for _, text in conversation):
            raise bad_request("every message is empty: give some content", param="messages")
        try:
            prompt, implicit_stop = render(conversation, chat_tokenizer)
        except Exception:  # a template can raise on a conversation it does not accept (e.g. roles order)
            raise bad_request("the chat template rejected this conversation (check the roles' order)",
                              param="messages") from None
        check_prompt_length(prompt, "messages")
        p = params(req, implicit_stop)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion", "created": created, "model": config.model_name}
        if req.stream:
            sbase = {**base, "object": "chat.completion.chunk"}
            first = [True]

            def chunk(piece: str, done: Completed | None, extra: dict[str, Any] | None) -> dict[str, Any]:
                delta: dict[str, Any] = {"content": piece}
                if first[0]:
                    delta["role"], first[0] = "assistant", False
                choice = {"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": done.finish_reason if done else None}
                return {**sbase, "choices": [choice], **(extra or {})}

            return await stream_response(request, batcher, prompt, p, chunk, include_usage(req), sbase)
        (result,) = await run_jobs(request, batcher, [prompt], p)
        message = {"role": "assistant", "content": result.text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}
        return JSONResponse({**base, "choices": [choice], "usage": usage([result]), **lmfuse_field(result)})

    return app


# ---- request plumbing ---------------------------------------------------------------------------------
async def read_json(request: Request, limit: int) -> Any:
    """The decoded body; 413 beyond ``limit`` bytes (checked on the header and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body too large: {declared} bytes (limit {limit})", code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > limit:
            raise APIError(413, f"request body too large (limit {limit} bytes)", code="body_too_large")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON body: {exc.msg if hasattr(exc, 'msg') else 'not UTF-8'}",
                          code="invalid_json") from None
    except RecursionError:  # a small body of deeply nested arrays: the parser's own recursion limit
        raise bad_request("malformed JSON body: nested too deeply", code="invalid_json") from None


def include_usage(req: Any) -> bool:
    return bool(req.stream_options and req.stream_options.get("include_usage"))


def lmfuse_field(result: Completed) -> dict[str, Any]:
    return {"lmfuse": {"weights": result.weights, "seed_member": result.seed_member}}


def usage(results: Sequence[Completed]) -> dict[str, int]:
    p = sum(r.prompt_tokens for r in results)
    c = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def as_api_error(exc: BaseException) -> APIError:
    """A pack error the client caused -> 400; anything else -> a generic 500 (logged, never echoed)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, LmfuseError):
        return bad_request(str(exc), code="invalid_request")
    log.error("generation failed", exc_info=exc)
    return APIError(500, "internal error while generating; see the server log", "server_error")


async def _disconnect(request: Request) -> None:
    """Returns once the client has closed the connection (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _race(request: Request, work: asyncio.Future[Any]) -> Any:
    """``await work`` unless the client disconnects first (then `ClientGone`)."""
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work not in done:
        work.cancel()  # nobody will read it
        raise ClientGone
    return work.result()


async def run_jobs(request: Request, batcher: Batcher, prompts: Sequence[str], p: Params) -> list[Completed]:
    batcher.admit(len(prompts))
    jobs: list[Job] = []
    try:
        jobs = [batcher.submit(prompt, p, stream=False) for prompt in prompts]
        together = asyncio.gather(*(j.future for j in jobs))
        together.add_done_callback(_retrieve)  # a gather cancelled on disconnect is not an unseen error
        try:
            return list(await _race(request, together))
        except ClientGone:  # not the pack's failure: no 500, no log
            raise
        except Exception as exc:
            raise as_api_error(exc) from None
    finally:
        for j in jobs:
            j.cancelled.set()  # a no-op once done; stops queued work when the client left
        batcher.release(len(prompts))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def stream_response(request: Request, batcher: Batcher, prompt: str, p: Params,
                          chunk: Callable[[str, Completed | None, dict[str, Any] | None], dict[str, Any]],
                          with_usage: bool, base: dict[str, Any]) -> Response:
    """Wait for the stream to start (so a bad prompt is a 4xx, not an error mid-stream), then send SSE."""
    batcher.admit()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            batcher.release()

    job: Job | None = None
    try:
        job = batcher.submit(prompt, p, stream=True)
        first = await _race(request, asyncio.ensure_future(job.events.get()))
    except BaseException:
        if job is not None:
            job.cancelled.set()
        release()
        raise
    if first[0] == "error":
        job.cancelled.set()
        release()
        raise as_api_error(first[1])
    _, weights, seed_member = first
    start_extra = {"lmfuse": {"weights": weights, "seed_member": seed_member}}

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            yield sse(chunk("", None, start_extra))
            while True:
                event = await job.events.get()
                if event[0] == "piece":
                    yield sse(chunk(event[1], None, None))
                elif event[0] == "end":
                    done: Completed = event[1]
                    yield sse(chunk("", done, lmfuse_field(done)))
                    if with_usage:
                        yield sse({**base, "choices": [], "usage": usage([done])})
                    break
                else:  # an error after the headers went out: an OpenAI error event, then the end
                    yield sse(as_api_error(event[1]).body())
                    break
            yield sse("[DONE]")
        finally:
            job.cancelled.set()  # the client left (or we are done): stop decoding for it
            release()

    # Enter the generator's try block now: from here on, closing it or collecting it (asyncio finalises
    # abandoned async generators) releases the slot, even if the client leaves before the body is sent.
    stream = events()
    opening = await stream.__anext__()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield opening
            async for part in stream:
                yield part
        finally:
            await stream.aclose()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the slot is already free

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind, None, None), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal server error; see the server log", "server_error"),
                            status_code=500)
