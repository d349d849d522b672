"""Run a measurement in a forked child: only the calling thread survives a fork, so threads that
other tests left running (paho network loops, daemons' helpers) cannot allocate during a
tracemalloc window and move its peak."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import traceback
from typing import Any, Callable, TypeVar

__all__ = ["in_fork"]

T = TypeVar("T")


def in_fork(fn: Callable[[], T], timeout: float = 240.0) -> T:
    """``fn()`` in a forked child; returns its (picklable) result or raises with its traceback."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            out: tuple[str, Any] = ("ok", fn())
        except BaseException:  # reported to the parent, which fails the test with it
            out = ("error", traceback.format_exc())
        send.send(out)

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    try:
        # Wake on the result or on the child's death (a crash, an unpicklable result), not only
        # on the timeout.
        multiprocessing.connection.wait([recv, proc.sentinel], timeout)
        if not recv.poll():
            proc.join(5)
            raise AssertionError(f"the forked child sent no result (exit code {proc.exitcode})"
                                 if proc.exitcode is not None
                                 else f"isolated measurement did not finish within {timeout:g} s")
        kind, value = recv.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    if kind == "error":
        raise AssertionError(f"in the forked child:\n{value}")
    return value  # type: ignore[no-any-return]
