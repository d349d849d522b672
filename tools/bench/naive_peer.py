"""The benchmark peer: the loop a user writes instead of running the daemon.

    python -m tools.bench.naive_peer MODEL FRAMES.npz HOST PORT TOPIC

onnxruntime with one intra-op thread, numpy ``(x / 255 - mean) / std`` on each 28x28 frame,
``json.dumps`` of the same fields the daemon publishes, paho ``publish`` at QoS 0 with paho's own
network thread. It loops over the frames until killed; the bench measures its CPU per delivered
result exactly as it measures the daemon's. Deliberately plain: no deadlines, no counters, no
outbox, no reconnect, no health: what the daemon does on top of this is what its overhead buys.
"""

import json
import sys
import time
import uuid

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main(model: str, frames_path: str, host: str, port: int, topic: str) -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    frames = np.load(frames_path)["images"]
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(host, port)
    client.loop_start()
    boot_id, seq = uuid.uuid4().hex[:16], 0
    while True:
        for frame in frames:
            t_frame = time.monotonic_ns()
            x = ((frame.astype(np.float32) / 255 - 0.1307) / 0.3081).reshape(1, 1, 28, 28)
            t0 = time.monotonic_ns()
            probs = sess.run(None, {name: x})[0][0]
            t1 = time.monotonic_ns()
            digit = int(probs.argmax())
            seq += 1
            doc = {"seq": seq, "boot_id": boot_id, "frame_seq": seq - 1, "digit": digit,
                   "confidence": round(float(probs[digit]), 4), "probs": [round(float(p), 4) for p in probs],
                   "latency_us": (t1 - t0) // 1000, "frame_age_us": (t1 - t_frame) // 1000,
                   "deadline_missed": False, "model_version": 2, "ts": round(time.time(), 3)}
            client.publish(topic, json.dumps(doc), qos=0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
