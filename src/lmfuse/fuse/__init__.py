"""Training-time knowledge fusion: FuseLLM and ProFuser, resumable stage by stage.

Public entry points: ``load_recipe`` (a typed ``FuseRecipe``: ``FuseLLMRecipe`` or ``ProFuserRecipe``) and
``lmfuse.fuse.pipeline.Run`` (a recipe's stages), and the stage functions ``extract_member``,
``align_source``, ``combine``, ``train`` for pipelines that reuse them.
"""

# The training methods register themselves in `lmfuse.fuse.pipeline.TRAINING_METHODS` when imported.
from lmfuse.fuse import fusellm, profuser  # noqa: F401
from lmfuse.fuse.recipe import FuseRecipe, load_recipe

__all__ = ["FuseRecipe", "load_recipe"]
