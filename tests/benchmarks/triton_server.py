"""Triton Inference Server through PyTriton, serving what ``frontend_bench.py`` compares this service with.

Runs in its own environment (PyTriton 0.7.0 pins numpy<2; ``frontend_bench.py --setup-triton`` creates it):

    .bench/pytriton/bin/python tests/benchmarks/triton_server.py --repository model_repository --http-port 8100

Models, both with Triton's dynamic batcher:

* ``echo``: returns its FP32 input (the no-op model; as ``service/echo.py``);
* ``classifier``: the shipped ``classifier/1/model.onnx`` on ONNX Runtime with the same session options as the
  service, softmax on the logits (``probabilities``), batches up to 64 waiting at most 5 ms (the service's
  ``max_batch_size`` and ``batch_wait_timeout_s``).

Prints ``READY`` once both models answer; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default=str(ROOT / "model_repository"))
    parser.add_argument("--http-port", type=int, default=8100)
    parser.add_argument("--grpc-port", type=int, default=8101)
    parser.add_argument("--metrics-port", type=int, default=8102)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: ORT's default, as the service)")
    parser.add_argument("--no-batching", action="store_true",
                        help="the classifier without the dynamic batcher (each request runs alone: Triton's batch-1 serving)")
    args = parser.parse_args()

    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    so = ort.SessionOptions()  # as service.runtime.create_session
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(str(Path(args.repository) / "classifier" / "1" / "model.onnx"), sess_options=so,
                                   providers=["CPUExecutionProvider"])

    @batch
    def echo(x):
        return {"y": x}

    @batch
    def classify(images):
        logits = session.run(None, {"images": images.astype(np.float32)})[0]
        logits = logits - logits.max(-1, keepdims=True)
        e = np.exp(logits)
        return {"probabilities": (e / e.sum(-1, keepdims=True)).astype(np.float32)}

    stop = threading.Event()
    config = TritonConfig(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name="echo", infer_func=echo,
                    inputs=[Tensor(name="x", dtype=np.float32, shape=(-1,))],
                    outputs=[Tensor(name="y", dtype=np.float32, shape=(-1,))],
                    config=ModelConfig(max_batch_size=64))
        triton.bind(model_name="classifier", infer_func=classify,
                    inputs=[Tensor(name="images", dtype=np.float32, shape=(1, 8, 8))],
                    outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
                    config=ModelConfig(max_batch_size=64, batcher=None if args.no_batching else
                                       DynamicBatcher(max_queue_delay_microseconds=5000)))
        triton.run()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print("READY", flush=True)
        stop.wait()


if __name__ == "__main__":
    sys.exit(main())
