"""Pure encoders for the payloads the agent publishes (bytes out, no I/O).

``result`` is built once per inference, so :class:`ResultEncoder` fills a prebuilt format string
instead of building a dict for ``json.dumps`` (about 4x cheaper). ``health`` is built every few
seconds and goes through ``json.dumps``. ``status`` is plain text (``online``/``stopped``/
``offline``) so it works as a Home Assistant availability topic with the default payloads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

__all__ = [
    "PROB_DECIMALS",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "STATUS_STOPPED",
    "ResultEncoder",
    "encode_health",
    "encode_status",
]

STATUS_ONLINE = b"online"
STATUS_STOPPED = b"stopped"
STATUS_OFFLINE = b"offline"
_STATUSES = {"online": STATUS_ONLINE, "stopped": STATUS_STOPPED, "offline": STATUS_OFFLINE}

PROB_DECIMALS = 4
_N_CLASSES = 10

Probs = Union[Sequence[float], "np.ndarray[Any, Any]"]


class ResultEncoder:
    """Encodes one inference result as compact JSON; ``boot_id`` is fixed per process.

    Keys: ``seq`` (monotonic per boot; with ``boot_id`` it makes re-sent duplicates detectable),
    ``boot_id``, ``frame_seq``, ``digit``, ``confidence``, ``probs`` (10 floats rounded to
    :data:`PROB_DECIMALS`), ``latency_us``, ``frame_age_us``, ``deadline_missed``,
    ``model_version``, ``ts`` (wall-clock seconds, ms resolution).
    """

    __slots__ = ("_fmt", "boot_id")

    def __init__(self, boot_id: str) -> None:
        self.boot_id = boot_id
        p = f"%.{PROB_DECIMALS}f"
        # json.dumps escapes the boot id once; '%' in it must not reach the format operator.
        boot = json.dumps(boot_id).replace("%", "%%")
        self._fmt = (
            '{"seq":%d,"boot_id":' + boot + ',"frame_seq":%d,"digit":%d,"confidence":' + p
            + ',"probs":[' + ",".join([p] * _N_CLASSES) + '],"latency_us":%d,"frame_age_us":%d,'
            '"deadline_missed":%s,"model_version":%d,"ts":%.3f}'
        )

    def encode(self, seq: int, frame_seq: int, digit: int, confidence: float, probs: Probs,
               latency_us: int, frame_age_us: int, deadline_missed: bool, model_version: int,
               ts: float) -> bytes:
        """The JSON bytes; non-finite floats become ``null`` (JSON has no NaN)."""
        vals = probs.tolist() if isinstance(probs, np.ndarray) else list(probs)
        if len(vals) != _N_CLASSES:
            raise ValueError(f"probs must hold {_N_CLASSES} values, got {len(vals)}")
        # '%f' of NaN/inf gives 'nan'/'inf' (invalid JSON); one sum catches any of them.
        if not math.isfinite(confidence + ts + sum(vals)):
            return self._encode_slow(seq, frame_seq, digit, confidence, vals, latency_us,
                                     frame_age_us, deadline_missed, model_version, ts)
        return (self._fmt % (seq, frame_seq, digit, confidence, *vals, latency_us, frame_age_us,
                             "true" if deadline_missed else "false", model_version, ts)).encode()

    def _encode_slow(self, seq: int, frame_seq: int, digit: int, confidence: float, vals: list[float],
                     latency_us: int, frame_age_us: int, deadline_missed: bool, model_version: int,
                     ts: float) -> bytes:
        doc = {
            "seq": int(seq), "boot_id": self.boot_id, "frame_seq": int(frame_seq), "digit": int(digit),
            "confidence": _round(confidence, PROB_DECIMALS),
            "probs": [_round(v, PROB_DECIMALS) for v in vals],
            "latency_us": int(latency_us), "frame_age_us": int(frame_age_us),
            "deadline_missed": bool(deadline_missed), "model_version": int(model_version),
            "ts": _round(ts, 3),
        }
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _round(v: float, ndigits: int) -> float | None:
    v = float(v)
    return round(v, ndigits) if math.isfinite(v) else None


def _finite(obj: Any) -> Any:
    """Replace non-finite floats (anywhere in dicts/lists) by None and numpy scalars by Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def encode_health(doc: Mapping[str, Any]) -> bytes:
    """Compact JSON of the health dict the daemon builds; NaN/inf become null, numpy becomes JSON.

    Raises TypeError for values JSON cannot represent (a bug in the caller, not bad input).
    """
    return json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False).encode()


def encode_status(state: str) -> bytes:
    """``online``/``stopped``/``offline`` as the retained availability payload."""
    try:
        return _STATUSES[state]
    except KeyError:
        raise ValueError(f"unknown status {state!r}; expected one of {', '.join(_STATUSES)}") from None
