"""Over-the-air model updates: signed manifests, chunked resumable transfer, gate, A/B slots, rollback.

See docs/ota.md for the protocol and the state diagram. The daemon uses two names from here:
:func:`startup_model` (before the engine loads) and :class:`OtaController` (once it runs). They are
imported lazily so that the pure codecs (manifest, keys, transfer) stay light for the operator's
CLI: importing them must not pull in onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.control.ota.controller import OtaController
    from agent.control.ota.startup import startup_model

__all__ = ["OtaController", "startup_model"]


def __getattr__(name: str) -> Any:
    if name == "OtaController":
        from agent.control.ota.controller import OtaController
        return OtaController
    if name == "startup_model":
        from agent.control.ota.startup import startup_model
        return startup_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
