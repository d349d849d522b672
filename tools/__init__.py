"""Developer tooling for digit-agent (not shipped to devices)."""

__all__: list[str] = []
