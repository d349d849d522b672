"""digit-agent: on-device digit recognition with int8 ONNX Runtime, MQTT telemetry and signed OTA models.

Data flow (see docs/architecture.md)::

    source/ -> ring.py -> preprocess.py -> inference/ -> publish/
    control/ (MQTT commands, OTA) -> verify -> model store -> engine swap
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
