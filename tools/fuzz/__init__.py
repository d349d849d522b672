"""Coverage-guided fuzz targets (atheris) for every parser that takes outside bytes; see docs/reliability.md."""

__all__: list[str] = []
