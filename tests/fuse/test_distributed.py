"""The whole recipe with 2 CPU processes over gloo (extract split, DDP training).

On CPU-only machines ``accelerate launch --cpu`` starts multi-process runs through mpirun only, so the
test uses ``torchrun`` (what ``accelerate launch`` runs on GPUs); accelerate's state then sees MULTI_CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmfuse.fuse import store
from lmfuse.models.load import load_member


@pytest.mark.slow  # ~70 s on 2 busy cores: two interpreters import torch + transformers
def test_two_cpu_processes_run_the_pipeline(tmp_path: Path, corpus_file: Path) -> None:
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("torchrun is not installed next to this Python")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "name": "dist", "output_dir": str(tmp_path / "out"),
        "target": {"model": "toy:bytebpe:gpt2:0", "name": "bytebpe"},
        "sources": [{"model": "toy:sentencepiece:llama:1", "name": "sentencepiece"}],
        "data": {"path": str(corpus_file), "max_chars": 120, "limit": 7},
        "extract": {"top_k": 6, "batch_size": 4, "rows_per_shard": 2},
        "train": {"lr": 1e-3, "warmup_ratio": 0.0, "micro_batch_size": 1, "grad_accum": 1, "max_steps": 2,
                  "save_every": 1, "log_every": 1},
    }))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [launcher, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "lmfuse.cli.main", "fuse", "run",
           str(recipe), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("fused model:") == 1  # said by the main process only
    out = tmp_path / "out"
    assert store.stage_done(out / "extract/bytebpe") and store.stage_done(out / "combine")
    log = [json.loads(line) for line in (out / "train/train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]
    ckpt = next((out / "train/checkpoints").glob("step-*"))
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    member = load_member(out / "train/model")
    assert member.logits_width == 448
