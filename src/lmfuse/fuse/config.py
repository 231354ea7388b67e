"""A recipe's sections: `lmfuse.config.section`, with errors that call the root of a recipe "recipe"."""

from __future__ import annotations

import dataclasses
from typing import TypeVar, dataclass_transform

from pydantic import Field

from lmfuse import config

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def section(cls: type[T]) -> type[T]:
    """A recipe section (``train``, ``align``, a member, ...): a missing or unknown top-level key is named
    as the recipe's (``unknown key in recipe 'lm_wieght'``)."""
    return config.section(where="recipe")(cls)
