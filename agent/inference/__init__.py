"""Inference: a loaded model (:mod:`.model`), the serving engine (:mod:`.engine`), the golden set."""

from agent.inference.engine import Engine, InferenceAborted
from agent.inference.golden import GoldenResult, GoldenSet, evaluate_golden, load_golden
from agent.inference.model import LoadedModel, ModelError

__all__ = ["Engine", "GoldenResult", "GoldenSet", "InferenceAborted", "LoadedModel", "ModelError",
           "evaluate_golden", "load_golden"]
