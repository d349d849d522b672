"""digit-agent-ota keygen | package | push | watch — the operator's side of OTA model updates.

    digit-agent-ota keygen --out ~/.config/digit-agent/ota.key
    digit-agent-ota package --model new.onnx --card new.card.json --key ~/.config/digit-agent/ota.key \\
        --job digits-2025-06-01 --version 7 --out digits-v7.ota.json
    digit-agent-ota package --model new.card.json --key ~/.config/digit-agent/ota.key \\
        --job digits-v8 --version 8 --out digits-v8.ota.json
    digit-agent-ota push --envelope digits-v7.ota.json --model new.onnx --device pi-042
    digit-agent-ota push --envelope digits-v7.ota.json --model new.onnx --group kitchen --expect 12
    digit-agent-ota watch --device pi-042

(pip install "digit-agent[operator]"; from a checkout python -m tools.ota is the same command.)

--model is an ONNX file, or a model card whose "variants" list the files: every variant of the
version goes in one signed job (push takes the same --model).

Exit codes: 0 done (committed), 1 a device refused/failed/rolled back or time ran out, 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from agent.control.ota.keys import keyid_of, parse_public_key, raw_public

from ..clihelp import HelpFormatter, prog
from ..fleet.common import add_broker_args, connection
from .package import PackageSpec, build_manifest, generate_key, load_payload, load_private_key, sign
from .push import Pusher, StatusWatch, connect, read_manifest

__all__ = ["main", "parser"]

_CHECKOUT = Path(__file__).resolve().parents[2]
# Installed, that is site-packages; only a source checkout is a place where a key could end up in git.
_REPO: Optional[Path] = _CHECKOUT if (_CHECKOUT / ".git").exists() else None
_TERMINAL = ("committed", "rejected", "failed", "rolled_back")


def _bar(progress: float, width: int = 30) -> str:
    filled = round(progress * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {progress * 100:5.1f} %"


def _line(device: str, doc: dict[str, Any]) -> str:
    reason = f"  {doc['reason']}" if doc.get("reason") else ""
    progress = _bar(float(doc.get("progress") or 0))
    return f"{device:<20} {doc.get('state', '?'):<12} v{doc.get('version')} {progress}{reason}"


def _keygen(a: argparse.Namespace) -> int:
    out = Path(a.out).expanduser().resolve()
    if _REPO is not None and _REPO in out.parents and not a.force:
        print(f"refusing to write a private key inside the repository ({_REPO}); use --force if you "
              f"really mean it", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        keyid, pub = generate_key(out)
    except FileExistsError:
        print(f"{out} exists; not overwriting a key", file=sys.stderr)
        return 2
    print(f"private key {out} (mode 0600) — keep it off devices and out of git")
    print(f"public key  {pub} — copy it into each device's ota.trusted_keys directory")
    print(f"key id      {keyid}")
    return 0


def _package(a: argparse.Namespace) -> int:
    payload = load_payload(Path(a.model))
    keys = [load_private_key(Path(k).expanduser()) for k in a.key]
    card: dict[str, Any] = json.loads(Path(a.card).read_text()) if a.card else payload.card
    adds = []
    for p in a.add_key:
        raw = raw_public(parse_public_key(Path(p).read_bytes()))
        adds.append({"keyid": keyid_of(raw), "pub": base64.b64encode(raw).decode()})
    spec = PackageSpec(job=a.job, version=a.version, family=a.family, chunk_size=a.chunk_size,
                       min_accuracy=a.min_accuracy, max_p99_ms=a.max_p99_ms, ttl_s=int(a.ttl_h * 3600),
                       card=card, keys_add=adds, keys_revoke=list(a.revoke_key), variants=payload.variants)
    body = build_manifest(payload.data, spec, keyid_of(raw_public(keys[0].public_key())))
    env = sign(body, keys)
    Path(a.out).write_bytes(env)
    m = read_manifest(env)
    expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.expires))
    names = f" (variants {', '.join(v.name for v in m.variants)})" if m.variants else ""
    print(f"{a.out}: job {m.job} version {m.version}{names}, {m.size} bytes in {m.chunk_count} chunks of "
          f"{m.chunk_size}, signed by {len(keys)} key(s), expires {expires} UTC")
    return 0


def _push(a: argparse.Namespace) -> int:
    env = Path(a.envelope).read_bytes()
    model = load_payload(Path(a.model)).data
    m = read_manifest(env)
    if len(model) != m.size:
        raise ValueError(f"{a.model} is {len(model)} bytes; the envelope announces {m.size}: not its model")
    lock = threading.Lock()

    def show(device: str, doc: dict[str, Any]) -> None:
        if doc.get("job") in (m.job, None):
            with lock:
                print(_line(device, doc), flush=True)

    pusher = Pusher(connection(a, "ota"), a.prefix, env, model, m, rate=a.rate)
    pusher.on_status = show
    try:
        pusher.send_manifest(device=a.device or "", group=a.group or "")
        print(f"manifest for job {m.job} v{m.version} sent to "
              f"{'device ' + a.device if a.device else 'group ' + a.group}; serving chunks", flush=True)
        return _wait(pusher.watch, [a.device] if a.device else None, a.expect, a.timeout, pusher)
    finally:
        pusher.close()


def _wait(watch: StatusWatch, devices: Optional[list[str]], expect: int, timeout: float,
          pusher: Optional[Pusher] = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with watch.lock:
            names = list(watch.docs) if devices is None else devices
        finished = {d: watch.done(d) for d in names}
        if names and all(finished.values()) and (devices is not None or len(names) >= expect):
            ok = all(doc is not None and doc["state"] == "committed" for doc in finished.values())
            sent = f", {pusher.sent} chunks sent for {pusher.requests} requests" if pusher else ""
            print(f"done: {sum(1 for d in finished.values() if d and d['state'] == 'committed')}/"
                  f"{len(names)} committed{sent}")
            return 0 if ok else 1
        time.sleep(0.2)
    print(f"timed out after {timeout:g} s", file=sys.stderr)
    return 1


def _watch(a: argparse.Namespace) -> int:
    watch = StatusWatch(a.job or "")
    last: dict[str, str] = {}

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        device = topic.split("/")[-3]
        doc = watch.offer(device, payload)
        if doc is None:
            return
        text = _line(device, doc)
        if last.get(device) != text:
            last[device] = text
            print(text, flush=True)
        if not a.job and doc.get("job"):
            watch.job = str(doc["job"])

    client, _ = connect(connection(a, "ota"), on_message, [f"{a.prefix}/{a.device}/ota/status"])
    try:
        return _wait(watch, [a.device], 1, a.timeout)
    finally:
        client.loop_stop()
        client.disconnect()


def _broker_args(sp: argparse.ArgumentParser) -> None:
    add_broker_args(sp)
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every device to finish")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("tools.ota"), description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)

    k = add("keygen", "new Ed25519 signing key (private 0600 + .pub)")
    k.add_argument("--out", required=True, help="private key file to create (kept off devices and out of git); "
                   "the public key goes to <out>.pub")
    k.add_argument("--force", action="store_true", help="allow a path inside the source checkout")
    k.set_defaults(func=_keygen)
    pk = add("package", "sign a model into an OTA envelope")
    pk.add_argument("--model", required=True, help="an ONNX file, or a model card listing variants")
    pk.add_argument("--key", action="append", required=True, help="private key (repeat to co-sign)")
    pk.add_argument("--job", required=True, help="unique job id ([A-Za-z0-9_.-], <= 64)")
    pk.add_argument("--version", type=int, required=True, help="model version, > the committed one")
    pk.add_argument("--card", default="", help="model card JSON (normalisation, metrics, ...); empty: none")
    pk.add_argument("--family", default="digit-28x28", help="model family; devices refuse another (ota.family)")
    pk.add_argument("--chunk-size", type=int, default=16384, help="bytes per transfer chunk")
    pk.add_argument("--min-accuracy", type=float, default=0.98,
                    help="device gate: golden-set accuracy the model must reach")
    pk.add_argument("--max-p99-ms", type=float, default=5.0, help="device gate: p99 latency ceiling")
    pk.add_argument("--ttl-h", type=float, default=168.0, help="hours until the manifest expires")
    pk.add_argument("--add-key", action="append", default=[], help="public key to trust from now on "
                    "(it must co-sign this manifest: pass its private key with --key too); repeatable")
    pk.add_argument("--revoke-key", action="append", default=[], help="key id to stop trusting; repeatable")
    pk.add_argument("--out", required=True, help="envelope file to write")
    pk.set_defaults(func=_package)
    sp = add("push", "send an envelope to a device or a group and serve chunks")
    _broker_args(sp)
    sp.add_argument("--envelope", required=True, help="signed envelope made by 'package'")
    sp.add_argument("--model", required=True, help="the ONNX file or model card the envelope was made from "
                    "(its chunks are served)")
    target = sp.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="one device id")
    target.add_argument("--group", help="a fleet group (the devices' ota.groups)")
    sp.add_argument("--expect", type=int, default=1, help="with --group: devices to wait for")
    sp.add_argument("--rate", type=float, default=200.0, help="chunks per second")
    sp.set_defaults(func=_push)
    w = add("watch", "follow a device's OTA status until it ends")
    _broker_args(w)
    w.add_argument("--device", required=True, help="device id")
    w.add_argument("--job", default="", help="wait for this job (empty: the first one seen)")
    w.set_defaults(func=_watch)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    a = parser().parse_args(argv)
    try:
        rc: int = a.func(a)
        return rc
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
