"""FuseLLM, top to bottom: every member's top-k over a corpus, moved onto the target's tokens, fused
(MinCE by default) and distilled into the target. Layout under ``output_dir``::

    extract/<member>/   top-k of every member in its own tokenization (target included)
    align/<member>/     each candidate in the target's tokenization and vocabulary
    combine/            the fused teacher (one top-k per target token)
    train/model/        the trained target (HF directory: weights + tokenizer)
"""

from __future__ import annotations

from pathlib import Path

from lmfuse.fuse import stages
from lmfuse.fuse.pipeline import TRAINING_METHODS, Run, TrainingMethod
from lmfuse.fuse.recipe import FuseLLMRecipe
from lmfuse.fuse.stages import View

STAGES = ("extract", "align", "combine", "train")


def fusellm(run: Run[FuseLLMRecipe]) -> Path:
    """Run the selected stages (``run.stage`` says which, on which process); returns the trained model's path."""
    if run.stage("extract", every_process=True):
        stages.extract(run, [corpus_view(run)])
    if run.stage("align"):
        stages.align(run, [corpus_view(run)])
    if run.stage("combine"):
        stages.combine(run, [corpus_view(run)])
    if run.stage("train", every_process=True):
        train(run)
    return run.path("train", "model")


def corpus_view(run: Run[FuseLLMRecipe]) -> View:
    """The corpus rows, read by every member, every candidate fused."""
    return View(run.recipe.out, run.rows, run.recipe.members, run.recipe.candidates)


def train(run: Run[FuseLLMRecipe]) -> None:
    from lmfuse.fuse.train import train as train_target

    if run.trained():
        return
    stages.require(run.path("combine"), "combine")
    train_target(run.target_only(), run.path("combine"), run.path("train"), run.recipe.train, progress=run.progress)


TRAINING_METHODS.register("fusellm")(TrainingMethod(STAGES, fusellm))
