"""`evaluate`: one pipeline, top to bottom: resolve tasks, sample examples, score, summarise.

Any `Scorer` can be evaluated (a member alone, several members, a fused pack): the runner only asks
for log-probabilities and does all normalisation itself, per UTF-8 byte.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from lmfuse import atomic
from lmfuse.errors import CorruptFileError, InputError
from lmfuse.eval import metrics
from lmfuse.eval.scorer import Demonstration, ExplainsWeights, LearnsFromDemonstrations, Scorer
from lmfuse.eval.tasks import MCExample, MCTask, Task, TextTask, describe_examples, load_task

if TYPE_CHECKING:
    from lmfuse.eval.sources import DataDir

WEIGHT_KEY = "weight:"
# Labelled examples per task for the strategies fitted per task: enough answers to fit 3 weights on, few
# enough that reading them costs less than scoring the task.
POOLED_DEMONSTRATIONS = 32


@dataclass
class TaskResult:
    """One task's outcome. ``metrics[system]`` holds ``acc``/``acc_norm`` (with ``_lo``/``_hi``,
    95% Wilson) for MC tasks, or ``bpb`` (with a 95% bootstrap interval over chunks) for text.
    ``per_example[system]`` keeps the raw per-item values, enough for paired comparisons; a system
    that weighs members (a pack's strategy) also keeps each member's weight per item under
    ``weight:<member>`` (`weights`)."""

    task: str
    kind: str
    source: str
    n: int
    n_available: int
    indices: list[int]
    chance: float | None
    metrics: dict[str, dict[str, float]]
    per_example: dict[str, dict[str, list[float]]]
    seconds: float

    def above_chance(self, system: str) -> bool:
        """True when the lower end of the accuracy interval (either scoring) is above chance."""
        if self.chance is None:
            return False
        m = self.metrics[system]
        return max(m["acc_lo"], m["acc_norm_lo"]) > self.chance

    def weights(self, system: str) -> dict[str, list[float]]:
        """``{member: [weight per item]}`` for a system that weighs members; empty for one that does not
        (a member alone, or results from before weights were recorded)."""
        return {k.removeprefix(WEIGHT_KEY): v for k, v in self.per_example[system].items() if k.startswith(WEIGHT_KEY)}


@dataclass
class Results:
    settings: dict[str, Any]
    tasks: list[TaskResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "tasks": [asdict(t) for t in self.tasks]}

    def save(self, path: Path) -> None:
        atomic.write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Results:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(settings=data["settings"], tasks=[TaskResult(**t) for t in data["tasks"]])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"{str(path)!r} is not an lmfuse results file ({type(exc).__name__}: {exc}); "
                                   "remove it or choose another --out") from None


RESUME_KEYS = ("limit", "shots", "seed", "systems", "models", "fit_on")
# Causal first (the default): fused bits per byte measure what generation would get. "text" is PackLLM's
# transductive set-up, kept as an option (reports say which was used).
FIT_ON = ("preceding", "text")


def finished_tasks(previous: Results, settings: dict[str, Any]) -> dict[str, TaskResult]:
    """The tasks of an earlier run that this run may reuse, by name; the runs must agree on every
    setting that changes a task's outcome (``RESUME_KEYS``), else an ``InputError`` names the
    differences."""
    before = {"fit_on": "text"}  # results written before the setting existed fitted on the text
    diff = [k for k in RESUME_KEYS if previous.settings.get(k, before.get(k)) != settings.get(k)]
    if diff:
        detail = "; ".join(f"{k}: {previous.settings.get(k)!r} then, {settings.get(k)!r} now" for k in diff)
        raise InputError(f"cannot resume: the earlier run differs in {detail}; use another --out or drop --resume")
    return {t.task: t for t in previous.tasks}


def merge(parts: Sequence[Results]) -> Results:
    """Results of the same tasks and settings run for different systems (e.g. one process per
    member, as models are installed) joined as if they had run together."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    keys = ("tasks", "limit", "shots", "seed")
    for other in parts[1:]:
        diff = [k for k in keys if other.settings[k] != first.settings[k]]
        if diff:
            raise ValueError(f"cannot merge results that differ in {diff}")
    systems = [s for p in parts for s in p.settings["systems"]]
    twice = sorted({s for s in systems if systems.count(s) > 1})
    if twice:
        raise ValueError(f"cannot merge: the parts hold system(s) {twice} twice")
    settings = dict(first.settings)
    settings["systems"] = systems
    settings["models"] = {k: v for p in parts for k, v in p.settings["models"].items()}
    settings["wall_seconds"] = round(sum(p.settings.get("wall_seconds", 0.0) for p in parts), 1)
    # A part that is itself a merge contributes the commands it was made from.
    settings["merged_from"] = [c for p in parts for c in p.settings.get("merged_from") or [p.settings.get("command")]]
    tasks = []
    for task in first.tasks:
        found = [next((t for t in p.tasks if t.task == task.task), None) for p in parts]
        pieces = [t for t in found if t is not None]
        if len(pieces) < len(parts):
            continue  # a part stopped before this task: only tasks every system finished are joined
        if any(t.indices != task.indices for t in pieces):
            raise ValueError(f"task {task.task}: the parts evaluated different examples")
        tasks.append(TaskResult(
            task=task.task, kind=task.kind, source=task.source, n=task.n, n_available=task.n_available,
            indices=task.indices, chance=task.chance,
            metrics={k: v for t in pieces for k, v in t.metrics.items()},
            per_example={k: v for t in pieces for k, v in t.per_example.items()},
            seconds=round(sum(t.seconds for t in pieces), 2),
        ))
    return Results(settings=settings, tasks=tasks)


def evaluate(
    scorer: Scorer,
    tasks: Sequence[str | Task],
    limit: int | None = None,
    shots: int = 0,
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
    bigbench_root: Path | None = None,
    shakespeare_root: Path | None = None,
    extra_settings: dict[str, Any] | None = None,
    on_task: Callable[[Results], object] | None = None,
    resume: Results | None = None,
    data_dir: DataDir | None = None,
    fit_on: str = FIT_ON[0],
    batch_size: int = 8,
) -> Results:
    """Evaluate every system of ``scorer`` on ``tasks`` (names or loaded tasks).

    ``limit`` caps the examples (MC) or text chunks (text) per task, drawn with ``seed``; ``shots``
    demonstrations precede each MC query, drawn per example with the same seed. ``on_task`` sees
    the partial results after each task (the CLI writes them, so a long run that is stopped keeps
    the tasks it finished); given those partial results as ``resume``, a rerun skips the finished
    tasks (see ``finished_tasks`` for when that is allowed). ``fit_on="preceding"`` (the default) scores
    each text chunk with weights fitted on the chunk before it (causal bits per byte; the first chunk, which
    has none, is not scored); ``"text"`` fits them on the chunk itself (PackLLM's transductive set-up). ``batch_size`` MC
    examples go through each forward pass together (results do not depend on it).
    """
    if fit_on not in FIT_ON:
        raise InputError(f"fit_on must be one of {', '.join(FIT_ON)}, got {fit_on!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not any(system.startswith("pack[") for system in scorer.systems()):
        fit_on = "text"  # nothing is fitted: every chunk is scored
    loaded = [
        t if not isinstance(t, str) else load_task(t, bigbench_root=bigbench_root, shakespeare_root=shakespeare_root,
                                                   data_dir=data_dir)
        for t in tasks
    ]
    started = time.time()
    results = Results(settings={
        "tasks": [t.name for t in loaded],
        "limit": limit,
        "shots": shots,
        "seed": seed,
        "systems": scorer.systems(),
        "fit_on": fit_on,
        "models": provenance or {},
        "lmfuse_version": _version("lmfuse"),
        "torch_version": _version("torch"),
        "transformers_version": _version("transformers"),
        "python": platform.python_version(),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra_settings or {}),
    })
    done = finished_tasks(resume, results.settings) if resume is not None else {}
    earlier = 0.0
    if done:
        results.settings["resumed_tasks"] = [t.name for t in loaded if t.name in done]
        earlier = float(resume.settings.get("wall_seconds", 0.0)) if resume is not None else 0.0
    for task in tqdm(loaded, desc="tasks", unit="task", disable=len(loaded) < 2):
        if task.name in done:
            results.tasks.append(done[task.name])
            continue
        t0 = time.perf_counter()
        if isinstance(task, MCTask):
            outcome = _run_mc(scorer, task, limit, shots, seed, batch_size)
        else:
            outcome = _run_text(scorer, task, limit, seed, fit_on)
        outcome.seconds = round(time.perf_counter() - t0, 2)
        results.tasks.append(outcome)
        results.settings["wall_seconds"] = round(time.time() - started + earlier, 1)
        if on_task is not None:
            on_task(results)
    results.settings["wall_seconds"] = round(time.time() - started + earlier, 1)
    return results


def _run_mc(scorer: Scorer, task: MCTask, limit: int | None, shots: int, seed: int, batch_size: int) -> TaskResult:
    examples = task.examples
    indices = metrics.sample_indices(len(examples), limit, seed)
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.group, []).append(i)
    systems = scorer.systems()
    shown = {i: metrics.shot_indices(groups[examples[i].group], i, shots, seed) for i in indices}
    if isinstance(scorer, LearnsFromDemonstrations):
        scorer.learn(pooled_demonstrations(examples, shown, seed))
    per: dict[str, dict[str, list[float]]] = {s: {"correct": [], "correct_norm": []} for s in systems}
    with tqdm(total=len(indices), desc=task.name, unit="ex", leave=False) as bar:
        for b in range(0, len(indices), batch_size):
            batch = [examples[i] for i in indices[b : b + batch_size]]
            requests, answers = [], []
            for i, ex in zip(indices[b : b + batch_size], batch, strict=True):
                demos = [examples[j].demo() for j in shown[i]]
                context, spans = metrics.kshot_context(ex.task_prefix, demos, ex.query, ex.separator)
                cut = len(context) - len(context.lstrip())
                requests.append((context[cut:], ex.options))
                answers.append([(a - cut, e - cut) for a, e in spans])
            results = scorer.loglikelihood_many(requests, answers)
            weights = scorer.batch_weights() if isinstance(scorer, ExplainsWeights) else []
            for j, (ex, scores) in enumerate(zip(batch, results, strict=True)):
                _record_weights(weights[j] if j < len(weights) else {}, per)
                for system in systems:
                    per[system]["correct"].append(float(metrics.is_correct(scores[system], ex.correct)))
                    normed = metrics.byte_normalised(scores[system], ex.options)
                    per[system]["correct_norm"].append(float(metrics.is_correct(normed, ex.correct)))
            bar.update(len(batch))
    chosen = [examples[i] for i in indices]
    summary = {}
    for system in systems:
        row: dict[str, float] = {}
        for key, name in (("correct", "acc"), ("correct_norm", "acc_norm")):
            hits, n = int(sum(per[system][key])), len(indices)
            row[name] = hits / n
            row[f"{name}_lo"], row[f"{name}_hi"] = metrics.wilson_interval(hits, n)
        summary[system] = row
    return TaskResult(
        task=task.name, kind="mc", source=task.source, n=len(indices), n_available=len(examples),
        indices=indices, chance=metrics.chance_level(describe_examples(chosen)),
        metrics=summary, per_example=per, seconds=0.0,
    )


def pooled_demonstrations(examples: Sequence[MCExample], shown: dict[int, list[int]],
                          seed: int) -> list[Demonstration]:
    """The task's labelled demonstrations for the strategies fitted per task: the examples the k-shot
    prompts show (``shown``: evaluated example -> its demonstrations), never an evaluated one, at most
    ``POOLED_DEMONSTRATIONS`` drawn with ``seed``."""
    pool = sorted({j for js in shown.values() for j in js} - set(shown))
    if len(pool) > POOLED_DEMONSTRATIONS:
        pool = sorted(random.Random(seed).sample(pool, POOLED_DEMONSTRATIONS))
    return [Demonstration((examples[j].task_prefix + examples[j].query).lstrip(), tuple(examples[j].options),
                          tuple(examples[j].correct)) for j in pool]


def _run_text(scorer: Scorer, task: TextTask, limit: int | None, seed: int, fit_on: str) -> TaskResult:
    skip = 1 if fit_on == "preceding" else 0  # the first chunk has no text before it to fit on
    if len(task.chunks) <= skip:
        raise InputError(f"task {task.name}: one chunk only, none to score with weights fitted on a preceding one")
    indices = [i + skip for i in metrics.sample_indices(len(task.chunks) - skip, limit, seed)]
    chunks = [task.chunks[i] for i in indices]
    n_bytes = [float(metrics.utf8_len(c)) for c in chunks]
    systems = scorer.systems()
    per: dict[str, dict[str, list[float]]] = {s: {"logprob": [], "bytes": n_bytes} for s in systems}
    for i, chunk in zip(tqdm(indices, desc=task.name, unit="chunk", leave=False), chunks, strict=True):
        # Scorers that fit nothing need not take ``preceding``: it is passed only when it is used.
        scores = scorer.text_logprob([chunk], [task.chunks[i - 1]]) if skip else scorer.text_logprob([chunk])
        _record_weights(scorer.last_weights() if isinstance(scorer, ExplainsWeights) else {}, per)
        for system in systems:
            per[system]["logprob"].append(scores[system][0])
    summary = {}
    for system in systems:
        logprobs = per[system]["logprob"]
        bits = [-lp / metrics.LN2 for lp in logprobs]
        lo, hi = metrics.bootstrap_ratio_interval(bits, n_bytes, seed=seed)
        summary[system] = {"bpb": metrics.bits_per_byte(sum(logprobs), int(sum(n_bytes))),
                           "bpb_lo": lo, "bpb_hi": hi, "bytes": sum(n_bytes)}
    return TaskResult(
        task=task.name, kind="text", source=task.source, n=len(indices), n_available=len(task.chunks),
        indices=indices, chance=None, metrics=summary, per_example=per, seconds=0.0,
    )


def _record_weights(weights: dict[str, dict[str, float]], per: dict[str, dict[str, list[float]]]) -> None:
    """Append the member weights of one item, for each system that weighs members."""
    for system, by_member in weights.items():
        for member, w in by_member.items():
            per[system].setdefault(WEIGHT_KEY + member, []).append(w)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
