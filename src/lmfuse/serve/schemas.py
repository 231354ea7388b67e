"""Request bodies of the OpenAI endpoints we serve, validated strictly (``"5"`` is not a number).

Fields the OpenAI API defines but a pack cannot honour (``n > 1``, ``logprobs``, ``tools``, ...) are
rejected by name rather than silently ignored; other unknown fields are ignored, as OpenAI's SDKs send
extras (``user``, ``metadata``) that do not change the result.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from lmfuse.serve.errors import APIError, bad_request


def _encodable(text: str) -> str:
    """Text the members can tokenize: a lone surrogate (``"\\ud800"``, legal in JSON) is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text holds a lone surrogate at position {exc.start}; send valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]

UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "best_of", "echo", "suffix", "logit_bias")


class _Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # torch seeds are signed 64-bit; a batch gives its i-th prompt seed + i, so keep well inside.
    seed: int | None = Field(default=None, ge=0, le=2**62)
    stop: Text | list[Text] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    stream_options: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: Text | list[Text]


def _text_part(kind: str) -> str:
    if kind != "text":
        raise ValueError(f"content part type {kind!r} is not supported: a pack reads text, so send "
                         "{\"type\": \"text\", \"text\": ...} parts only")
    return kind


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Annotated[str, AfterValidator(_text_part)]
    text: Text = ""


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[Message]


def parse(model: type[_Sampling], payload: Any) -> Any:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_type")
    for name in UNSUPPORTED:
        if payload.get(name) not in (None, False, 0):
            raise bad_request(f"{name!r} is not supported by an lmfuse pack", param=name, code="unsupported")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A union reports one error per member; the one our own validators raised says what is wrong.
        err = next((e for e in errors if e["type"] == "value_error"), errors[0])
        # Union members appear in the location as tags ("list[str]", "function-after[...]"): not fields.
        param = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)) or None
        # The message describes the constraint; it never echoes a stack or the whole body.
        message = str(err["msg"]).removeprefix("Value error, ")
        raise APIError(400, f"invalid {param or 'body'}: {message}", "invalid_request_error", param,
                       "invalid_value" if err["type"] != "missing" else "missing_required_parameter") from None


def stop_list(stop: str | list[str] | None, limit: int) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limit:
        raise bad_request(f"at most {limit} stop strings; got {len(stops)}", param="stop")
    return [s for s in stops if s]


def max_tokens(req: _Sampling, default: int, limit: int) -> int:
    """``max_tokens`` (or ``max_completion_tokens``), in 1..limit; the configured default when absent."""
    value = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if value is None:
        return min(default, limit)
    if value < 1 or value > limit:
        raise bad_request(f"{param} must be between 1 and {limit} (this server's limit); got {value}",
                          param=param)
    return value
