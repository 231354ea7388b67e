"""Errors a user can act on. The CLI turns any of these into one message and a non-zero exit code."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (libraries' messages span lines; the CLI prints one), cut to
    ``limit`` characters when given."""
    text = " ".join(str(exc).split())
    return text if limit is None else text[:limit]


class LmfuseError(Exception):
    """Base class: a clear message that names the bad value and what would be valid."""


class ModelLoadError(LmfuseError):
    """A member could not be loaded (unknown path or id, unsupported GGUF architecture, ...)."""


class TaskError(LmfuseError):
    """An evaluation task could not be found or read."""


class InputError(LmfuseError):
    """Bad user input: an empty prompt or text, a malformed record, ..."""


class NumericalError(LmfuseError):
    """A model produced NaN or infinite log-probabilities."""


class CorruptFileError(LmfuseError):
    """A stored artefact is half-written or does not match its checksum."""


class TokenizerError(ModelLoadError, TypeError):
    """A tokenizer lmfuse cannot read (a slow, Python-only one): its surfaces need the fast backend."""
