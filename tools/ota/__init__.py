"""Operator side of OTA model updates: ``python -m tools.ota keygen|package|push|watch``."""

__all__: list[str] = []
