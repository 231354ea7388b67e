"""Turn a recipe's member spec into a loaded ``Member`` (real models, or toy ones for tests and demos)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from lmfuse.errors import InputError

if TYPE_CHECKING:
    from lmfuse.models.member import Member


class MemberSource(Protocol):
    """What loading needs of a recipe's member (`lmfuse.fuse.recipe.MemberSpec`, which checks toy specs
    with `parse_toy`: so this module does not import the recipe)."""

    @property
    def model(self) -> str: ...

    @property
    def slug(self) -> str: ...

    @property
    def dtype(self) -> str: ...

TOY_PREFIX = "toy:"


def parse_toy(model: str) -> tuple[str, str, int]:
    """``toy:<family>[:<arch>[:<seed>]]`` -> (family, arch, seed); a bad spec names what is valid."""
    from lmfuse.models.toy import FAMILIES

    parts = model[len(TOY_PREFIX):].split(":")
    family = parts[0]
    arch = parts[1] if len(parts) > 1 else "llama"
    if family not in FAMILIES or arch not in ("llama", "gpt2") or len(parts) > 3:
        raise InputError(
            f"bad toy member {model!r}: expected toy:<family>[:<arch>[:<seed>]] with family in "
            f"{', '.join(FAMILIES)} and arch in llama, gpt2"
        )
    try:
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise InputError(f"bad toy member {model!r}: seed {parts[2]!r} is not an integer") from None
    return family, arch, seed


def resolve_member(spec: MemberSource, device: str = "cpu", dtype: str | None = None) -> Member:
    """``toy:<family>[:<arch>[:<seed>]]`` builds a tiny deterministic member; anything else goes to ``load_member``.

    Toy members are rebuilt identically from their spec (same tokenizer, same seeded weights), so
    every stage and process sees the same model without saving it first.
    """
    if spec.model.startswith(TOY_PREFIX):
        from lmfuse.models.toy import toy_member

        family, arch, seed = parse_toy(spec.model)
        member = toy_member(family, arch=arch, seed=seed, pad_to=64)
        member.name = spec.slug
        member.model.to(device)
        return member
    from lmfuse.models.load import load_member

    return load_member(spec.model, name=spec.slug, dtype=dtype or spec.dtype, device=device)
