"""Over-the-air model updates: signed manifests, chunked resumable transfer, gate, A/B slots, rollback.

See docs/ota.md for the protocol and the state diagram. The daemon uses two names from here:
:func:`startup_model` (before the engine loads) and :class:`OtaController` (once it runs).
"""

from agent.control.ota.controller import OtaController
from agent.control.ota.startup import startup_model

__all__ = ["OtaController", "startup_model"]
