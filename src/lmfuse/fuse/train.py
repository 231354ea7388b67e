"""Stage 4: continue training the target on ``lambda * CLM + (1 - lambda) * fusion`` — one visible loop.

Runs unchanged on 1 CPU process, on several CPU processes over gloo
(``torchrun --nproc_per_node 2 -m lmfuse.cli.main fuse train recipe.yaml``), or on GPUs with DDP / FSDP /
DeepSpeed ZeRO-2 through an ``accelerate`` config (``accelerate launch --config_file
configs/accelerate/fsdp.yaml -m lmfuse.cli.main fuse train recipe.yaml``; ``fuse/backends.py``).

Data order is a pure function of the optimizer step: epoch e visits the rows in the permutation
``default_rng(seed + e)``; global micro-batch j holds rows ``perm[j*G:(j+1)*G]`` (G = micro-batch
size x processes) and process p takes every p-th of them. A checkpoint (model, optimizer, scheduler,
every process's RNG, via ``Accelerator.save_state``) plus the step therefore resumes exactly.
Incomplete global micro-batches and accumulation windows at the end of an epoch are dropped.

Row layout: stored entry j predicts target token j, so the model reads ``[prefix] + ids[:-1]``
and position j is trained towards ``ids[j]`` (CLM) and the fused teacher entry j (fusion). A row with a
``context`` (instruction data: the target's rendered prompt) reads ``[prefix] + context + ids[:-1]``;
the context positions carry no label and no teacher, so the loss covers the response only.

**Modes** (ProFuser). An example may hold several rows, one per *mode* (ProFuser: the inference-mode
row, then the training-mode row of the same prompt). ``weights(step, total_steps)`` gives one weight
per mode; each mode's loss is ``lambda * CLM + (1 - lambda) * fusion`` over its own rows, and the step's
loss is their weighted sum. The active modes' rows share one forward pass (one backward, so DDP
synchronises once); a mode of weight 0 is left out of the step. FuseLLM is the one-mode case.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmfuse import atomic
from lmfuse.errors import CorruptFileError, InputError, one_line
from lmfuse.fuse import store
from lmfuse.fuse.losses import IGNORE, fuse_loss
from lmfuse.fuse.recipe import TrainConfig
from lmfuse.models.member import Member
from lmfuse.models.trainable import causal_logits, cosine_schedule, save_hf_dir, trainable_copy


def _no_context() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class FusedRow:
    """One training row: ``ids [T]`` target tokens, teacher ``topk_ids [T, K]`` / ``topk_logp [T, K]``
    (-1 / -inf: no teacher at that token), and ``context [C]``: unlabelled tokens read before ``ids``."""

    ids: np.ndarray
    topk_ids: np.ndarray
    topk_logp: np.ndarray
    context: np.ndarray = field(default_factory=_no_context)


def load_fused_by_key(fused_dir: Path) -> dict[int, FusedRow]:
    """Every row of a finished combine stage (empty ones included), by row key."""
    manifest = store.read_json(fused_dir / "manifest.json")
    out = {}
    for path in store.list_shards(fused_dir, manifest["num_shards"]):
        shard = store.read_shard(path)
        for r in range(shard.num_rows):
            out[int(shard.rows["key"][r])] = FusedRow(store.unpack_ids(shard.row(r, "ids")),
                                                      store.unpack_ids(shard.row(r, "topk_ids")),
                                                      shard.row(r, "topk_logp").astype(np.float32))
    return out


def load_fused(fused_dir: Path) -> list[FusedRow]:
    """Every non-empty row of a finished combine stage, in corpus order."""
    rows = load_fused_by_key(fused_dir)
    return [rows[k] for k in sorted(rows) if len(rows[k].ids)]


def collate(rows: list[FusedRow], prefix: int, pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``/``attention_mask``/``labels`` ``[B, T]``, teacher ``[B, T, K]``."""
    T = max(len(r.context) + len(r.ids) for r in rows)
    K = max(r.topk_ids.shape[1] for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    t_ids = torch.full((B, T, K), -1, dtype=torch.long)
    t_lp = torch.full((B, T, K), -torch.inf, dtype=torch.float32)
    for b, r in enumerate(rows):
        c, n, k = len(r.context), len(r.context) + len(r.ids), r.topk_ids.shape[1]
        seq = torch.as_tensor(np.concatenate([r.context, r.ids]).astype(np.int64))
        input_ids[b, 0] = prefix
        input_ids[b, 1:n] = seq[:-1]
        mask[b, :n] = 1
        labels[b, c:n] = seq[c:]
        t_ids[b, c:n, :k] = torch.as_tensor(r.topk_ids)
        t_lp[b, c:n, :k] = torch.as_tensor(r.topk_logp)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "teacher_ids": t_ids,
            "teacher_logp": t_lp}


Weights = Callable[[int, int], Sequence[float]]
"""``(optimizer step, total steps) -> one loss weight per mode``."""


class Schedule:
    """Which rows process ``rank`` reads at global micro-batch ``j`` (deterministic, resumable)."""

    def __init__(self, num_rows: int, cfg: TrainConfig, world: int) -> None:
        self.n = num_rows
        self.cfg = cfg
        self.world = world
        self.global_mb = cfg.micro_batch_size * world
        self.steps_per_epoch = (num_rows // self.global_mb) // cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{num_rows} training rows cannot fill one optimizer step of {cfg.grad_accum} accumulation x "
                f"{cfg.micro_batch_size} rows x {world} processes; lower train.grad_accum or micro_batch_size"
            )
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self._perm: dict[int, np.ndarray] = {}

    def rows(self, micro_batch: int, rank: int) -> list[int]:
        per_epoch = self.steps_per_epoch * self.cfg.grad_accum
        epoch, j = divmod(micro_batch, per_epoch)
        if epoch not in self._perm:
            self._perm[epoch] = np.random.default_rng(self.cfg.seed + epoch).permutation(self.n)
        chunk = self._perm[epoch][j * self.global_mb : (j + 1) * self.global_mb]
        return [int(i) for i in chunk[rank :: self.world]]


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = [p for p in ckpt_dir.glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def train(
    target: Member,
    fused_dir: Path | Sequence[Sequence[FusedRow]],
    out_dir: Path,
    cfg: TrainConfig,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    modes: Sequence[str] = ("fused",),
    weights: Weights | None = None,
) -> Path:
    """Train a copy of ``target``'s model; write checkpoints under ``out_dir/checkpoints`` and the final
    HF model directory (weights + tokenizer) to ``out_dir/model``, which is returned.

    ``fused_dir``: a finished combine stage (FuseLLM: one mode), or the examples themselves, each a
    sequence of rows, one per name in ``modes``, weighted by ``weights`` (default: 1 for every mode).
    Resumes from the latest checkpoint in ``out_dir/checkpoints``. ``on_step(step, logs)`` is called
    after every optimizer step (after any checkpoint of that step).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from lmfuse.fuse.backends import check_backend, fit_deepspeed
    from lmfuse.fuse.dist import use_cpu

    # accelerate counts the micro-batches (``accumulate``): DeepSpeed steps its optimizer inside ``backward``
    # and must know which micro-batch ends an optimizer step.
    accelerator = Accelerator(cpu=use_cpu(), gradient_accumulation_steps=cfg.grad_accum)
    check_backend(accelerator, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    examples = [(r,) for r in load_fused(fused_dir)] if isinstance(fused_dir, Path) else list(fused_dir)
    if any(len(ex) != len(modes) for ex in examples):
        raise InputError(f"every training example needs one row per mode {list(modes)}")
    weigh: Weights = weights or (lambda step, total: [1.0] * len(modes))
    sched = Schedule(len(examples), cfg, accelerator.num_processes)
    model = trainable_copy(target)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    warmup = math.ceil(cfg.warmup_ratio * sched.total_steps)
    # transformers' warm-up starts at lr 0, so the first optimizer step would learn nothing (a quarter of a
    # 4-step run). Run its schedule one step ahead over total + 1 steps: step s gets factor (s + 1) / warmup
    # while warming up, and the last step's cosine factor stays above 0.
    scheduler = cosine_schedule(optimizer, warmup, sched.total_steps + 1)
    with warnings.catch_warnings():  # torch warns of a step before the optimizer's: here that is the intent
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()
    fit_deepspeed(accelerator, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The schedule is neither prepared (accelerate's wrapper would step it once per process) nor registered
    # for checkpointing: accelerate reloads registered objects with a full unpickler
    # (custom_checkpoint_*.pkl, ``weights_only=False``), so a file planted in a run directory would run
    # code. The learning rate is a pure function of the step, so a resume re-steps a fresh schedule to it.
    ckpt_dir = out_dir / "checkpoints"
    start = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        # accelerate loads the model (safetensors), the optimizer and the random states with
        # ``weights_only=True``: tensors and plain containers only. lmfuse registers no custom object, so a
        # custom_checkpoint_*.pkl was planted (or left by an older lmfuse): refuse it, never unpickle it.
        planted = sorted(p.name for p in last.glob("custom_checkpoint_*"))
        if planted:
            raise CorruptFileError(
                f"cannot resume from {str(last)!r}: it holds {', '.join(planted)}, which lmfuse does not write and "
                "will not unpickle (loading it could run code); delete the file(s) to resume from this checkpoint"
            )
        check_random_states(last, accelerator.process_index)
        try:
            accelerator.load_state(str(last))
        except Exception as exc:  # a truncated model.safetensors or optimizer.bin (safetensors, torch raise their own)
            raise CorruptFileError(
                f"cannot resume from {str(last)!r}: {type(exc).__name__}: {one_line(exc, 200)}; "
                "delete the checkpoint to restart training from the beginning"
            ) from None
        start = read_step(last)
        for _ in range(start):
            scheduler.step()
    prefix, pad = target.prefix_token_id, target.pad_token_id
    log_path = out_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        keep_logged_steps(log_path, start)  # steps logged after the checkpoint run again: log them once
    bar = tqdm(total=sched.total_steps, initial=start, desc="train", unit="step",
               disable=not (progress and accelerator.is_main_process))
    # Logged per mode as "clm"/"fusion" (one mode) or "<mode>_clm"/"<mode>_fusion" (several).
    part_keys = [("clm", "fusion") if len(modes) == 1 else (f"{name}_clm", f"{name}_fusion") for name in modes]
    keys = ["loss", *(k for pair in part_keys for k in pair)]
    for step in range(start, sched.total_steps):
        started = time.perf_counter()
        w = [float(x) for x in weigh(step, sched.total_steps)]
        active = [m for m in range(len(w)) if w[m] != 0.0]
        if len(w) != len(modes) or not active:
            raise InputError(f"step {step}: mode weights {w} must give a non-zero weight to one of {list(modes)}")
        sums = dict.fromkeys(keys, 0.0)
        n_tokens = 0
        for micro in range(cfg.grad_accum):
            chosen = [examples[i] for i in sched.rows(step * cfg.grad_accum + micro, accelerator.process_index)]
            # The active modes' rows in one batch: mode m owns rows m_slot*B .. (m_slot+1)*B - 1.
            batch = collate([ex[m] for m in active for ex in chosen], prefix, pad)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            # No gradient sync but on the last micro-batch (DDP/FSDP), and DeepSpeed's step there only.
            with accelerator.accumulate(model):
                logits = causal_logits(model, batch["input_ids"], batch["attention_mask"])
                total = logits.new_zeros(())
                for slot, m in enumerate(active):
                    sl = slice(slot * len(chosen), (slot + 1) * len(chosen))
                    parts = fuse_loss(logits[sl], batch["labels"][sl], batch["teacher_ids"][sl],
                                      batch["teacher_logp"][sl], lm_weight=cfg.lm_weight, kind=cfg.loss)
                    total = total + w[m] * parts.total
                    sums[part_keys[m][0]] += float(parts.clm.detach()) / cfg.grad_accum
                    sums[part_keys[m][1]] += float(parts.fusion.detach()) / cfg.grad_accum
                accelerator.backward(total)  # divided by grad_accum there (by DeepSpeed itself under DeepSpeed)
            sums["loss"] += float(total.detach()) / cfg.grad_accum
            n_tokens += int(batch["attention_mask"].sum())
        # Logged losses are means over processes (each process only saw its share of the rows).
        reduced = accelerator.reduce(torch.tensor([sums[k] for k in keys], device=accelerator.device),
                                     reduction="mean").tolist()
        sums = dict(zip(keys, reduced, strict=True))
        # Tokens read this step by all processes (every mode, prompts included): for equal-token comparisons.
        sums["tokens"] = int(accelerator.reduce(torch.tensor(n_tokens, device=accelerator.device), reduction="sum"))
        if len(modes) > 1:
            sums.update({f"w_{name}": w[m] for m, name in enumerate(modes)})
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logs = {**sums, "grad_norm": float(grad_norm), "lr": lr,
                "tokens_per_s": n_tokens / max(time.perf_counter() - started, 1e-9)}
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.3f}", tok_s=f"{logs['tokens_per_s']:.0f}")
        if accelerator.is_main_process and (done % cfg.log_every == 0 or done == sched.total_steps):
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": done, **logs}) + "\n")
        if done % cfg.save_every == 0 or done == sched.total_steps:
            save_checkpoint(accelerator, ckpt_dir, done)
        if on_step is not None:
            on_step(done, logs)
    bar.close()
    final = out_dir / "model"
    accelerator.wait_for_everyone()
    # Every process takes part: under FSDP the weights are gathered from the shards (the main process
    # alone would wait forever); otherwise this is the unwrapped model's own state dict.
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = out_dir / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf_dir(accelerator.unwrap_model(model), target.tokenizer, tmp, state_dict=state)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    accelerator.wait_for_everyone()
    return final


def keep_logged_steps(log_path: Path, last: int) -> None:
    """Drop the lines of ``train_log.jsonl`` for steps after ``last`` (the checkpoint a run resumes from),
    so that every step appears once however often the run was stopped."""
    if not log_path.is_file():
        return
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= last]
    if len(kept) != len(lines):
        atomic.write_text(log_path, "".join(kept))


def read_train_log(log_path: Path) -> list[dict[str, Any]]:
    """The logged steps of ``train_log.jsonl`` in order (empty when there is no log; a torn last line is skipped)."""
    if not log_path.is_file():
        return []
    lines = log_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip() and _logged_step(line) < 1 << 62]


def trained_tokens(log_path: Path) -> int | None:
    """Tokens read by all logged steps (None without a log). Exact when ``log_every`` is 1."""
    return sum(int(r.get("tokens", 0)) for r in read_train_log(log_path)) or None


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line: dropped


def check_random_states(checkpoint: Path, process: int) -> None:
    """Refuse a checkpoint whose random states cannot be restored: accelerate would log it at INFO and go
    on with other random numbers, so the resumed run would silently differ from an uninterrupted one."""
    from accelerate.utils import load

    path = checkpoint / f"random_states_{process}.pkl"
    try:
        load(path)  # weights_only=True: a payload or a garbled file is refused here, never run
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, OSError...
        raise CorruptFileError(
            f"cannot resume from {str(checkpoint)!r}: its random states ({path.name}) cannot be restored "
            f"({type(exc).__name__}); delete the checkpoint to restart training from the beginning"
        ) from None


def read_step(checkpoint: Path) -> int:
    """The step a checkpoint was saved at (``trainer_state.json``); a missing or garbled file is a clear error."""
    path = checkpoint / "trainer_state.json"
    try:
        step = json.loads(path.read_text(encoding="utf-8"))["step"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"cannot resume from {str(checkpoint)!r}: {path.name} is unreadable ({exc}); "
                               "remove the checkpoint to restart training") from None
    if not isinstance(step, int) or step < 0:
        raise CorruptFileError(f"cannot resume from {str(checkpoint)!r}: step {step!r} in {path.name} is not a step")
    return step


def save_checkpoint(accelerator: Any, ckpt_dir: Path, step: int) -> None:
    """Save under a temporary name, then rename; keep only the newest complete checkpoint."""
    tmp = ckpt_dir / f"tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        final = ckpt_dir / f"step-{step:07d}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in ckpt_dir.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
