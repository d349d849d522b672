"""Fleet operations: ``python -m tools.fleet status|rollout|simulate`` (see docs/fleet.md)."""

__all__: list[str] = []
