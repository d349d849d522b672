"""Chooses the frame source named by ``[source] type``."""

from __future__ import annotations

from agent.config.schema import SourceConfig
from agent.source.base import FrameSource

__all__ = ["make_source"]


def make_source(cfg: SourceConfig) -> FrameSource:
    # Imported lazily: a replay device never needs pyserial's or the pipe reader's imports.
    if cfg.type == "replay":
        from agent.source.replay import ReplaySource
        return ReplaySource(cfg)
    if cfg.type == "serial":
        from agent.source.serial_source import SerialSource
        return SerialSource(cfg)
    if cfg.type == "pipe":
        from agent.source.pipe import PipeSource
        return PipeSource(cfg)
    raise ValueError(f"unknown source type {cfg.type!r}")
