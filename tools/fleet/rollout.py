"""``python -m tools.fleet rollout``: a signed model to many devices, canaries first, resumable.

Packaging, signing, the manifest topics and chunk serving are tools.ota's (:mod:`tools.ota.package`,
:class:`tools.ota.push.Pusher`); this module only decides who gets the manifest when, and stops.

1. Canaries (``--canary-fraction``, at least one) get the manifest; wait until each reports a
   terminal ``ota/status`` for the job or ``--timeout`` passes (late ones count as failures).
2. More than ``--max-failures`` failures: abort. Canaries that committed are rolled back by
   pushing ``--rollback-model`` under a NEW, higher version (job ``<job>-rb``): devices refuse
   lower versions (anti-rollback), so "back" is always "forward to the old weights".
3. Otherwise the rest, in ``--waves`` batches, with the same threshold after each batch.

The state lives in ``--state`` (JSON, rewritten after every change) and ``<state>.env`` (the signed
envelope): running the same command again resumes; retained ``ota/status`` messages tell what
happened meanwhile, and devices still busy are sent the manifest again (they resume their download).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import queue
import sys
import time
from pathlib import Path
from typing import Any, Optional

from agent.control.ota.keys import keyid_of, raw_public
from agent.control.ota.store import atomic_write
from agent.inference.model import read_card

from ..clihelp import HelpFormatter
from ..ota.package import PackageSpec, build_manifest, load_payload, load_private_key, sign
from ..ota.push import Pusher, connect, read_manifest
from ..progress import Progress
from .common import add_broker_args, connection
from .plan import RolloutState, make_stages

__all__ = ["add_args", "package", "run", "stage_verdict"]

_log = logging.getLogger(__name__)
_Event = tuple[str, dict[str, Any]]


def add_args(p: argparse.ArgumentParser) -> None:
    add_broker_args(p)
    t = p.add_argument_group("targets")
    t.add_argument("--devices", default="", help="comma-separated device ids")
    t.add_argument("--devices-file", default="", help="file with one device id per line")
    t.add_argument("--group", default="", help="send the waves after the canaries on the group topic "
                                                "(members still come from --devices/--devices-file)")
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help="the new ONNX model")
    m.add_argument("--envelope", default="", help="an envelope made by 'digit-agent-ota package' for --model")
    m.add_argument("--key", default="", help="private key to sign with (needed without --envelope, and to roll back)")
    m.add_argument("--version", type=int, default=0, help="model version (without --envelope); 0: not given")
    m.add_argument("--job", default="", help="job id (empty: rollout-v<version>)")
    m.add_argument("--min-accuracy", type=float, default=0.98, help="device gate: golden-set accuracy floor")
    m.add_argument("--max-p99-ms", type=float, default=5.0, help="device gate: p99 latency ceiling")
    m.add_argument("--chunk-size", type=int, default=16 * 1024, help="bytes per transfer chunk")
    r = p.add_argument_group("stages")
    r.add_argument("--canary-fraction", type=float, default=0.1,
                   help="share of the devices in the first stage (at least one device)")
    r.add_argument("--waves", type=int, default=1, help="batches after the canaries")
    r.add_argument("--max-failures", type=int, default=0, help="abort when failures exceed this")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds a stage may take")
    r.add_argument("--rollback-model", default="", help="model to restore on canaries after an abort")
    r.add_argument("--rate", type=float, default=500.0, help="chunks per second sent by the pusher")
    p.add_argument("--state", required=True, help="rollout state file (JSON); rerun the command to resume")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")


def package(model_path: str, key_path: str, job: str, version: int, args: argparse.Namespace) -> bytes:
    """Build and sign an envelope with tools.ota's packaging; the model card beside the model goes along
    (a model card with variants as ``model_path``: every variant in one job)."""
    key = load_private_key(Path(key_path))
    payload = load_payload(Path(model_path))
    spec = PackageSpec(job=job, version=version, chunk_size=args.chunk_size, min_accuracy=args.min_accuracy,
                       max_p99_ms=args.max_p99_ms, card=payload.card or read_card(Path(model_path)),
                       variants=payload.variants)
    return sign(build_manifest(payload.data, spec, keyid_of(raw_public(key.public_key()))), [key])


def _targets(args: argparse.Namespace) -> list[str]:
    ids = [d.strip() for d in args.devices.split(",") if d.strip()]
    if args.devices_file:
        ids += [ln.strip() for ln in Path(args.devices_file).read_text().splitlines() if ln.strip()]
    return ids


def _load_or_plan(args: argparse.Namespace, model: bytes) -> tuple[RolloutState, bytes]:
    state_path, env_path = Path(args.state), Path(args.state + ".env")
    sha = hashlib.sha256(model).hexdigest()
    if state_path.exists():
        state = RolloutState.from_json(state_path.read_bytes())
        if state.model_sha256 != sha:
            raise ValueError(f"{state_path} belongs to another model (sha256 {state.model_sha256[:12]}…)")
        _log.info("resuming job %s at stage %d", state.job, state.stage)
        return state, env_path.read_bytes()
    if args.envelope:
        envelope = Path(args.envelope).read_bytes()
    elif args.key and args.version > 0:
        envelope = package(args.model, args.key, args.job or f"rollout-v{args.version}", args.version, args)
    else:
        raise ValueError("give --envelope, or --key and --version to sign here")
    m = read_manifest(envelope)
    if m.sha256 != sha:
        raise ValueError("the envelope does not describe --model (sha256 differs)")
    state = RolloutState(job=m.job, version=m.version, model_sha256=sha, max_failures=args.max_failures,
                         stages=make_stages(_targets(args), m.job, args.canary_fraction, args.waves))
    atomic_write(env_path, envelope)
    return state, envelope


class _Runner:
    """Sends stages through the pusher and follows ``ota/status`` on its own connection: retained
    statuses included (the pusher skips them), which is what tells a resumed run what happened."""

    def __init__(self, args: argparse.Namespace, state: RolloutState, pusher: Pusher) -> None:
        self.args, self.state, self.pusher = args, state, pusher
        self.events: queue.Queue[_Event] = queue.Queue()
        self.watch, _ = connect(connection(args, "watch"), self._on_status, [f"{args.prefix}/+/ota/status"])

    def _on_status(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """paho's thread: parse and hand off only."""
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if isinstance(doc, dict):
            self.events.put((topic.split("/")[-3], doc))

    def close(self) -> None:
        self.watch.loop_stop()
        self.watch.disconnect()

    def save(self) -> None:
        atomic_write(Path(self.args.state), self.state.to_json())

    def send_stage(self) -> None:
        s = self.state
        key = str(s.stage)
        devices = s.current()
        resend = [d for d in devices if d in s.sent and d not in s.outcome]
        if key not in s.stage_started:
            s.stage_started[key] = time.time()
            if self.args.group and s.stage > 0:
                s.sent.update(dict.fromkeys(devices, time.time()))
                self.save()
                self.pusher.send_manifest(group=self.args.group)
                _log.info("stage %d: manifest sent to group %s (%d devices)", s.stage, self.args.group, len(devices))
                return
            resend = devices
        for d in resend:
            s.sent.setdefault(d, time.time())
        self.save()
        for d in resend:
            self.pusher.send_manifest(device=d)
        _log.info("stage %d: manifest sent to %d device(s)", s.stage, len(resend))

    def wait_stage(self, timeout_s: float) -> None:
        s = self.state
        current = s.current()
        progress = Progress(f"stage {s.stage + 1}/{len(s.stages)}", total=len(current), unit="devices settled")
        try:
            self._wait(timeout_s, progress)
        finally:
            progress.close()

    def _wait(self, timeout_s: float, progress: Progress) -> None:
        s = self.state
        current = s.current()
        while s.pending():
            settled = [d for d in current if d in s.outcome]
            failed = sum(1 for d in settled if s.outcome[d] != "committed")
            progress.set(len(settled), note=f"{len(settled) - failed} committed, {failed} failed")
            # Checked on every pass: devices stuck downloading report progress every 0.5 s, so
            # "no message for a while" never comes and cannot be what triggers the timeout.
            if s.time_out(time.time(), timeout_s):
                self.save()
                continue
            try:
                dev, doc = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            out = s.record(dev, doc)
            if out is not None:
                _log.info("%s: %s %s", dev, out, s.reason.get(dev, ""))
                self.save()  # on a canary failure keep waiting: a canary that commits must be rolled back

    def drain(self, quiet_s: float = 1.0, limit_s: float = 10.0) -> None:
        """Apply the status messages that arrived so far (retained ones after a resume): until none
        came for ``quiet_s``, at most ``limit_s`` (a chatty fleet never goes quiet)."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            try:
                dev, doc = self.events.get(timeout=quiet_s)
            except queue.Empty:
                return
            self.state.record(dev, doc)


def _rollback(args: argparse.Namespace, state: RolloutState) -> None:
    devices = state.committed()
    if not devices:
        state.rollback = {"devices": [], "outcome": {}, "note": "no device committed the new model"}
        return
    if not (args.rollback_model and args.key):
        state.rollback = {"devices": devices, "outcome": {},
                          "note": "not rolled back: give --rollback-model and --key"}
        return
    model = load_payload(Path(args.rollback_model)).data
    job, version = f"{state.job}-rb", state.version + 1
    envelope = package(args.rollback_model, args.key, job, version, args)
    rb = RolloutState(job=job, version=version, model_sha256=hashlib.sha256(model).hexdigest(),
                      stages=[devices], max_failures=len(devices))
    pusher = Pusher(connection(args, "rollback"), args.prefix, envelope, model, read_manifest(envelope), args.rate)
    try:
        runner = _Runner(args, rb, pusher)
        runner.save = lambda: None  # type: ignore[method-assign]  # the outer state records the result
        runner.send_stage()
        runner.wait_stage(args.timeout)
        runner.close()
    finally:
        pusher.close()
    state.rollback = {"job": job, "version": version, "devices": devices, "outcome": dict(rb.outcome)}


def _execute(args: argparse.Namespace, state: RolloutState, envelope: bytes, model: bytes) -> None:
    pusher = Pusher(connection(args, "rollout"), args.prefix, envelope, model, read_manifest(envelope), args.rate)
    runner = _Runner(args, state, pusher)
    try:
        runner.drain()
        while state.result == "running" and state.stage < len(state.stages):
            runner.send_stage()
            runner.wait_stage(args.timeout)
            if state.over_threshold():
                state.result = "aborted"
                state.abort_reason = (f"{len(state.failures())} failure(s) > --max-failures {state.max_failures} "
                                      f"in stage {state.stage}")
            print(stage_verdict(state), file=sys.stderr, flush=True)
            if state.result == "aborted":
                break
            state.stage += 1
            runner.save()
    finally:
        runner.close()
        pusher.close()
    if state.result == "aborted":
        _log.error("rollout aborted: %s", state.abort_reason)
        if state.stage == 0:
            _rollback(args, state)
    else:
        state.result = "done"
    runner.save()


def stage_verdict(state: RolloutState) -> str:
    """One line per finished stage: who it was, what came of it, what happens next."""
    devices = state.current()
    counts: dict[str, int] = {}
    for d in devices:
        counts[state.outcome.get(d, "pending")] = counts.get(state.outcome.get(d, "pending"), 0) + 1
    name = "canaries" if state.stage == 0 else f"wave {state.stage}"
    outcome = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    total = len(state.failures())
    if state.result == "aborted":
        nxt = f"ABORT: {state.abort_reason}"
    elif state.stage + 1 < len(state.stages):
        nxt = f"{total} failure(s) so far <= --max-failures {state.max_failures}: next stage"
    else:
        nxt = "last stage done"
    return (f"rollout {state.job} stage {state.stage + 1}/{len(state.stages)} ({name}, {len(devices)} devices): "
            f"{outcome} — {nxt}")


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 done without failures, 1 aborted or done with failures, 2 usage/broker error."""
    try:
        model = load_payload(Path(args.model)).data
        state, envelope = _load_or_plan(args, model)
        if state.result == "running":
            _execute(args, state, envelope, model)
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"fleet rollout: {exc}", file=sys.stderr)
        return 2
    summary = state.summary()
    print(json.dumps(summary, indent=1) if args.json else _text(summary))
    return 0 if state.result == "done" and not state.failures() else 1


def _text(s: dict[str, Any]) -> str:
    lines = [f"job {s['job']} (v{s['version']}): {s['result']}; stages {s['stages']}; outcomes {s['outcomes']}"]
    lines += [f"  {d}: {why}" for d, why in sorted(s["failures"].items())]
    if s["abort_reason"]:
        lines.append(f"aborted: {s['abort_reason']}")
    if s["rollback"]:
        rb = s["rollback"]
        lines.append(f"rollback: {rb.get('note') or rb.get('job')} {rb.get('outcome') or ''}".rstrip())
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fleet rollout", formatter_class=HelpFormatter)
    add_args(p)
    return run(p.parse_args(argv))
