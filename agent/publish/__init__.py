"""MQTT publishing: a never-blocking publisher with a bounded drop-oldest outbox, payload encoders
and credential loading. See :mod:`agent.publish.client` for the design."""

from agent.publish.auth import CredentialError, Credentials, load_credentials
from agent.publish.client import Publisher, resolve_topic
from agent.publish.outbox import Message, Outbox
from agent.publish.payloads import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    STATUS_STOPPED,
    ResultEncoder,
    encode_health,
    encode_status,
)

__all__ = [
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "STATUS_STOPPED",
    "CredentialError",
    "Credentials",
    "Message",
    "Outbox",
    "Publisher",
    "ResultEncoder",
    "encode_health",
    "encode_status",
    "load_credentials",
    "resolve_topic",
]
