"""Test-time fusion (PackLLM): weigh members per prompt, fuse their next-token distributions, score, generate."""

from lmfuse.ensemble.config import MemberSpec, PackConfig
from lmfuse.ensemble.fusion import FUSIONS
from lmfuse.ensemble.generate import Generation, Stream
from lmfuse.ensemble.pack import Pack
from lmfuse.ensemble.weighting import WEIGHTINGS, WeightOptions, WeightProblem, WeightReport, fit_weights

__all__ = ["FUSIONS", "WEIGHTINGS", "Generation", "MemberSpec", "Pack", "PackConfig", "Stream", "WeightOptions",
           "WeightProblem", "WeightReport", "fit_weights"]
