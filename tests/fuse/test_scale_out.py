"""The shipped accelerate configs (configs/accelerate/): FSDP2 and DeepSpeed ZeRO-2 for the training stage.

Without a GPU: both configs go through accelerate's own launcher parsing and plugin classes (and
DeepSpeed's config model when deepspeed is installed), and a launcher config asking for a back end that
accelerate does not set up is refused. With 2 CPU processes over gloo (``slow``): the training stage runs
under each config (``scale_out_worker.py`` says how accelerate is let past its GPU check) and matches a
plain one-process run number for number: the sparse fusion loss, gradient accumulation and clipping, the
checkpoint, and the gathered final model. What needs a GPU (bf16, NCCL, speed) is in docs/fuse.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmfuse.errors import InputError
from lmfuse.fuse.backends import fit_deepspeed
from lmfuse.fuse.recipe import TrainConfig
from lmfuse.fuse.train import train
from lmfuse.models.load import load_member
from lmfuse.models.member import Member

from .conftest import Prepared
from .scale_out_worker import toy_without_dropout

CONFIGS = Path(__file__).parents[2] / "configs" / "accelerate"
FSDP = CONFIGS / "fsdp.yaml"
ZERO2 = CONFIGS / "deepspeed-zero2.yaml"
WORKER = Path(__file__).with_name("scale_out_worker.py")
TARGET = "toy:bytebpe:gpt2:0"  # the target of the `prepared` run: a GPT-2, so tied embeddings are saved too
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

# 2 processes x 1 row x 2 accumulated micro-batches read the same rows per optimizer step as 1 process x
# 1 row x 4; with dropout off the two runs do the same arithmetic (per-row mean losses, averaged).
TWO = TrainConfig(lr=1e-3, warmup_ratio=0.0, micro_batch_size=1, grad_accum=2, epochs=2, max_grad_norm=0.5,
                  save_every=1, log_every=1)
ONE = TrainConfig(**{**asdict(TWO), "grad_accum": 4})


def launcher_env(config: Path) -> dict[str, str]:
    """The accelerate/FSDP variables ``accelerate launch --config_file config`` gives each process
    (accelerate's own parsing and validation of the file)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "lmfuse.cli.main"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mp_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_fsdp_config_is_fsdp2_wrapping_each_transformer_block(monkeypatch: pytest.MonkeyPatch,
                                                               toy_members: dict[str, Member]) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import StateDictType

    env = launcher_env(FSDP)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's variables, as every process does
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # read back with weights_only=True
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # no offload
    assert not plugin.activation_checkpointing
    # No class names in the config: the blocks each transformers model lists in `_no_split_modules`.
    for member, block in ((toy_members["bytebpe"], "GPT2Block"), (toy_members["wordpiece"], "LlamaDecoderLayer")):
        policy = fsdp2_prepare_auto_wrap_policy(plugin, member.model)
        assert policy is not None
        wrapped = [type(m).__name__ for m in member.model.modules() if policy(m)]
        assert set(wrapped) == {block} and len(wrapped) == member.model.config.num_hidden_layers


def test_deepspeed_config_is_zero2_and_takes_the_recipe_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    env = launcher_env(ZERO2)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == 2 and ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert "optimizer" not in ds and "scheduler" not in ds  # lmfuse's AdamW and schedule
    # What the recipe owns is left to it ("auto") and filled from it before accelerate.prepare.
    assert ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == ds["train_micro_batch_size_per_gpu"] == "auto"
    cfg = TrainConfig(micro_batch_size=3, grad_accum=5, max_grad_norm=0.7)
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))
    fit_deepspeed(accelerator, cfg)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (3, 5, 0.7)
    ds["gradient_accumulation_steps"] = 4  # as a config that states its own value
    with pytest.raises(InputError, match=r"gradient_accumulation_steps=4.*train.grad_accum is 5"):
        fit_deepspeed(accelerator, cfg)
    if HAS_DEEPSPEED:  # DeepSpeed's own model of the ZeRO section (it rejects unknown keys and values)
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        assert DeepSpeedZeroConfig(**ds["zero_optimization"]).stage == 2


def test_a_backend_accelerate_does_not_set_up_is_refused(monkeypatch: pytest.MonkeyPatch, prepared: Prepared,
                                                         tmp_path: Path) -> None:
    target = prepared.members["bytebpe"]
    cfg = TrainConfig(grad_accum=1)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # `accelerate launch --config_file fsdp.yaml` on CPUs
    with pytest.raises(InputError, match=r"asks for FSDP, but accelerate runs (NO|MULTI_CPU)"):
        train(target, prepared.out / "combine", tmp_path / "fsdp", cfg, progress=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    with pytest.raises(InputError, match=r"gradient_accumulation_steps=3, but the recipe's train\.grad_accum is 1"):
        train(target, prepared.out / "combine", tmp_path / "gas", cfg, progress=False)
    assert not (tmp_path / "fsdp").exists() and not (tmp_path / "gas").exists()  # refused before anything ran


@pytest.fixture(scope="module")
def plain_run(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same training on one process without any back end: the reference."""
    out = tmp_path_factory.mktemp("plain")
    train(toy_without_dropout(TARGET), prepared.out / "combine", out, ONE, progress=False)
    return out


def run_two_processes(config: Path, fused: Path, out: Path, stop_after: int = 0) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed next to this Python")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fp32 on CPU (the configs' bf16 is for GPUs), so that the run can be compared with the plain one exactly.
    cmd = [accelerate, "launch", "--config_file", str(config), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(port), str(WORKER), TARGET, str(fused), str(out), json.dumps(asdict(TWO)), str(stop_after)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def assert_same_training(out: Path, plain: Path) -> None:
    log, ref = ([json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (out, plain))
    assert [e["step"] for e in log] == [e["step"] for e in ref] == [1, 2]
    for got, want in zip(log, ref, strict=True):
        assert got["tokens"] == want["tokens"]
        for key in ("loss", "clm", "fusion", "grad_norm", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert all(e["grad_norm"] > TWO.max_grad_norm for e in log)  # clipping was active in both
    weights, reference = (load_member(d / "model").model.state_dict() for d in (out, plain))
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow  # 25-60 s on 2 busy cores: two launches
def test_fsdp_on_two_cpu_processes_trains_as_one_plain_process(prepared: Prepared, plain_run: Path,
                                                                tmp_path: Path) -> None:
    # Stopped after step 1's checkpoint and launched again: the second launch resumes from the FSDP
    # checkpoint (model and optimizer state gathered in full, read back with weights_only=True).
    log = tmp_path / "fsdp/train_log.jsonl"
    run_two_processes(FSDP, prepared.out / "combine", tmp_path / "fsdp", stop_after=1)
    first = log.read_text().splitlines()
    assert [json.loads(line)["step"] for line in first] == [1]
    run_two_processes(FSDP, prepared.out / "combine", tmp_path / "fsdp")
    assert log.read_text().splitlines()[0] == first[0]  # step 1 not run again (its tokens_per_s would differ)
    assert_same_training(tmp_path / "fsdp", plain_run)
    ckpt = next((tmp_path / "fsdp/checkpoints").glob("step-*"))
    names = {p.name for p in ckpt.iterdir()}
    assert {"pytorch_model_fsdp.bin", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"} <= names


@pytest.mark.slow  # 15-40 s on 2 busy cores
@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (optional: pip install deepspeed)")
def test_deepspeed_zero2_on_two_cpu_processes_trains_as_one_plain_process(prepared: Prepared, plain_run: Path,
                                                                           tmp_path: Path) -> None:
    run_two_processes(ZERO2, prepared.out / "combine", tmp_path / "zero2")
    assert_same_training(tmp_path / "zero2", plain_run)
    ckpt = next((tmp_path / "zero2/checkpoints").glob("step-*"))
    shards = {p.name for p in (ckpt / "pytorch_model").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= shards

