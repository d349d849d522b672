"""Over-the-air model updates: signed manifests, chunked resumable transfer, gate, A/B slots, rollback.

See docs/ota.md for the protocol and the state diagram.
"""

__all__: list[str] = []
