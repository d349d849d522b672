"""Running as a systemd service: sd_notify, the liveness-gated watchdog, and journald logging.

See docs/systemd.md for the unit, its hardening and the installer.
"""

from agent.service.liveness import Liveness
from agent.service.logsetup import setup_logging
from agent.service.sdnotify import Notifier
from agent.service.watchdog_pinger import WatchdogPinger

__all__ = ["Liveness", "Notifier", "WatchdogPinger", "setup_logging"]
