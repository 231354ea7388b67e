"""The shared configuration layer (`lmfuse.config`): the recipe, the pack and the server report a bad value the
same way, as one lmfuse error naming the key, the value and what is valid."""

from __future__ import annotations

import dataclasses

import pytest

from lmfuse.config import UnknownChoiceError
from lmfuse.ensemble import PackConfig
from lmfuse.errors import InputError
from lmfuse.serve import ServeConfig


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_batch": 0}, r"^serve: max_batch: input should be greater than or equal to 1 \(got 0\)$"),
    ({"port": 70000}, r"^serve: port: input should be less than or equal to 65535 \(got 70000\)$"),
    ({"batch_window_ms": -1.0}, r"^serve: batch_window_ms: input should be greater than or equal to 0 \(got -1\.0\)$"),
    ({"model_name": ""}, r"^serve: model_name: string should have at least 1 character \(got ''\)$"),
    ({"max_bacth": 2}, r"^serve: unknown key 'max_bacth'\. Did you mean 'max_batch'.*Valid: api_key, "),
])
def test_a_bad_server_setting_is_one_line_naming_it(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        ServeConfig(**fields)  # type: ignore[arg-type]


def test_server_settings_are_checked_when_replaced_too() -> None:
    config = ServeConfig(port=0)
    assert dataclasses.replace(config, max_batch=2).max_batch == 2
    with pytest.raises(InputError, match="max_pending"):
        dataclasses.replace(config, max_pending=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("fields", "kind", "message"), [
    ({"fusion": "prod"}, UnknownChoiceError,
     r"^pack: fusion: unknown fusion rule 'prod'\. Did you mean 'product'\? Valid: mixture, product\.$"),
    ({"weighting": "packllm-op"}, UnknownChoiceError, r"^pack: weighting: .*Did you mean 'packllm-opt'.*Valid: .*uniform"),
    ({"weigting": "uniform"}, InputError, r"^pack: unknown key 'weigting'\. Did you mean 'weighting'"),
    ({"members": [{"spec": "a", "dtyp": "float16"}]}, InputError, r"^pack: unknown key in members\.0 'dtyp'\. Did you mean 'dtype'"),
    ({"tau": 0}, InputError, r"^pack: tau: input should be greater than 0 \(got 0\)$"),
    ({"dtype": "bfloat61"}, UnknownChoiceError, r"^pack: dtype: unknown dtype 'bfloat61'\. Did you mean 'bfloat16'"),
    ({"members": [{"spec": "a", "dtype": "fp16"}]}, UnknownChoiceError, r"^pack: members\.0\.dtype: unknown dtype 'fp16'"),
])
def test_a_bad_pack_field_is_one_line_naming_it(fields: dict[str, object], kind: type[Exception], message: str) -> None:
    with pytest.raises(kind, match=message):
        PackConfig.of(**fields)


def test_the_api_key_stays_out_of_the_servers_repr() -> None:
    from lmfuse.serve import ServeConfig

    config = ServeConfig(api_key="s3cret-key")
    assert config.api_key == "s3cret-key" and "s3cret-key" not in repr(config)
