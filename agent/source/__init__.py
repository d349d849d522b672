"""Frame sources: each fills the :class:`~agent.ring.FrameRing` from one kind of input."""

from agent.source.base import Backoff, FrameSource
from agent.source.factory import make_source

__all__ = ["Backoff", "FrameSource", "make_source"]
