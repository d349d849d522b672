"""Control plane: over-the-air model updates (:mod:`agent.control.ota`)."""

__all__: list[str] = []
