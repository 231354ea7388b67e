"""A small FuseLLM run (extract -> align -> combine) on the three toy members, shared by the fuse tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmfuse.fuse.combine import CombineConfig
from lmfuse.fuse.pipeline import Run
from lmfuse.fuse.recipe import DataConfig, ExtractConfig, FuseLLMRecipe, MemberSpec, TrainConfig
from lmfuse.models.member import Member
from lmfuse.models.toy import toy_corpus


@dataclass
class Prepared:
    recipe: FuseLLMRecipe
    run: Run[FuseLLMRecipe]
    members: dict[str, Member]
    source_state: dict[str, dict[str, torch.Tensor]]

    @property
    def out(self) -> Path:
        return self.recipe.out


def tiny_recipe(out: Path, corpus: Path, **train: object) -> FuseLLMRecipe:
    # Target bytebpe (a GPT-2 with dropout, so exact resume needs the RNG state too).
    return FuseLLMRecipe(
        name="test", output_dir=str(out),
        target=MemberSpec("toy:bytebpe:gpt2:0", name="bytebpe"),
        sources=(MemberSpec("toy:sentencepiece:llama:1", name="sentencepiece"),
                 MemberSpec("toy:wordpiece:llama:2", name="wordpiece")),
        data=DataConfig(path=str(corpus), max_chars=120, limit=7),
        extract=ExtractConfig(top_k=6, batch_size=4, rows_per_shard=3),
        combine=CombineConfig(function="min-ce"),
        train=TrainConfig(**{"lr": 1e-3, "warmup_ratio": 0.0, "micro_batch_size": 2, "grad_accum": 1,
                             "save_every": 1, "log_every": 1, **train}),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(toy_corpus()[:1200])
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, toy_members: dict[str, Member],
             corpus_file: Path) -> Prepared:
    recipe = tiny_recipe(tmp_path_factory.mktemp("fuse") / "run", corpus_file)
    state = {name: {k: v.clone() for k, v in m.model.state_dict().items()} for name, m in toy_members.items()}
    run = Run(recipe, members=toy_members, progress=False, num_shards=1, shard_index=0)
    run.run(("extract", "align", "combine"))
    return Prepared(recipe, run, toy_members, state)
