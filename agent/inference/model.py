"""One loaded ONNX model: a tuned CPU session with preallocated I/O bindings per batch size."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnxruntime as ort

__all__ = ["INPUT_SHAPE", "NUM_CLASSES", "LoadedModel", "ModelError", "read_card", "run_options", "session_options"]

log = logging.getLogger(__name__)

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


class ModelError(RuntimeError):
    """The model cannot serve: unreadable, refused by onnxruntime, or the wrong signature."""


def session_options() -> ort.SessionOptions:
    """One small model on a small core: one thread, no spinning (idle CPU ≈ 0), full optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def run_options() -> ort.RunOptions:
    """RunOptions for the hot path, with ``gpu_graph_id`` set although we run on the CPU.

    Why: onnxruntime's Python ``run_with_iobinding`` (1.2x and later) reads that entry on every
    call; when it is absent the C++ lookup throws and the wrapper catches the exception, which
    costs ~28 µs per run on this machine, more than the whole int8 model. "0" is the default
    graph id; the CPU provider ignores it."""
    ro = ort.RunOptions()
    ro.add_run_config_entry("gpu_graph_id", "0")
    return ro


def read_card(model_path: Path, card_path: str = "") -> dict[str, Any]:
    """The model card beside the model (``<stem>.card.json``), or ``{}`` when there is none."""
    p = Path(card_path) if card_path else model_path.with_suffix(".card.json")
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{p}: unreadable model card: {exc}") from None
    if not isinstance(card, dict):
        raise ModelError(f"{p}: model card must be a JSON object")
    return card


@dataclass
class LoadedModel:
    path: Path
    session: ort.InferenceSession
    version: int
    sha256: str
    card: dict[str, Any]
    input_name: str
    output_name: str
    batch_max: int
    variant: str = ""  # which variant of its model set this is (agent.inference.variants)
    choice: dict[str, Any] = field(default_factory=dict)  # how it was chosen (health shows it)
    _bindings: list[tuple[ort.IOBinding, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    _run_options: ort.RunOptions = field(default_factory=run_options, repr=False)

    @classmethod
    def load(cls, path: Path | str, batch_max: int = 4, card: Optional[dict[str, Any]] = None,
             version: Optional[int] = None) -> LoadedModel:
        """Load, check the I/O signature, bind preallocated buffers and warm up every batch size."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ModelError(f"{p}: cannot read model: {exc.strerror or exc}") from None
        card = read_card(p) if card is None else card
        try:
            session = ort.InferenceSession(data, sess_options=session_options(),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelError(f"{p}: onnxruntime refused the model: {exc}") from None
        ver = version if version is not None else int(card.get("version", 0))
        inp, out = session.get_inputs(), session.get_outputs()
        model = cls(p, session, ver, hashlib.sha256(data).hexdigest(), card,
                    inp[0].name if inp else "", out[0].name if out else "", batch_max)
        problems = model.check_signature()
        if problems:
            raise ModelError(f"{p}: " + "; ".join(problems))
        model._bind()
        return model

    def check_signature(self) -> list[str]:
        """What stops this graph from serving the pipeline: one float input [N,1,28,28], one [N,10] output."""
        problems = []
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            return [f"expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}"]
        i, o = inputs[0], outputs[0]
        if i.type != "tensor(float)" or o.type != "tensor(float)":
            problems.append(f"expected float tensors, got input {i.type}, output {o.type}")
        if len(i.shape) != 4 or tuple(i.shape[1:]) != INPUT_SHAPE:
            problems.append(f"input {i.name} has shape {i.shape}, expected [N, 1, 28, 28]")
        if len(o.shape) != 2 or o.shape[1] != NUM_CLASSES:
            problems.append(f"output {o.name} has shape {o.shape}, expected [N, 10]")
        if isinstance(i.shape[0], int) and i.shape[0] != 1:
            problems.append(f"batch dimension is fixed at {i.shape[0]}; use 1 or a dynamic one")
        return problems

    def _bind(self) -> None:
        """One binding per batch size 1..batch_max: input and output live in arrays we own."""
        fixed_batch = self.session.get_inputs()[0].shape[0]
        sizes = [fixed_batch] if isinstance(fixed_batch, int) else list(range(1, self.batch_max + 1))
        self._bindings = [None] * (self.batch_max + 1)  # type: ignore[list-item]
        for n in sizes:
            x = np.zeros((n, *INPUT_SHAPE), dtype=np.float32)
            y = np.zeros((n, NUM_CLASSES), dtype=np.float32)
            b = self.session.io_binding()
            b.bind_input(self.input_name, "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
            b.bind_output(self.output_name, "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
            self._bindings[n] = (b, x, y)
            for _ in range(3):  # warm-up: first runs allocate ORT's arena and pick kernels
                self.session.run_with_iobinding(b, self._run_options)
        if isinstance(fixed_batch, int):  # a batch-1 graph serves every batch size one by one
            self.batch_max = 1

    def buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The (input, output) arrays bound for batch size ``n``; write input, then :meth:`run`."""
        _, x, y = self._bindings[n]
        return x, y

    def run(self, n: int, run_options: Optional[ort.RunOptions] = None) -> None:
        """Infer the batch of ``n`` already written into ``buffers(n)[0]``; allocation-free."""
        ro = run_options if run_options is not None else self._run_options
        self.session.run_with_iobinding(self._bindings[n][0], ro)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Convenience (not the hot path): probabilities for any number of inputs."""
        out = np.empty((len(x), NUM_CLASSES), dtype=np.float32)
        step = self.batch_max
        for start in range(0, len(x), step):
            n = min(step, len(x) - start)
            xin, yout = self.buffers(n)
            xin[...] = x[start:start + n]
            self.run(n)
            out[start:start + n] = yout
        return out
