"""``make run``: a local Ray instance with Serve, serving the three models from the ONNX model repository.

HTTP on ``SERVE_HTTP_PORT`` (default 8000) with OpenAPI docs at ``/docs``, gRPC ``inference.v1.Inference`` on
``SERVE_GRPC_PORT`` (default 9000), Prometheus metrics on ``METRICS_PORT`` (default 8080); the repository is read from
``MODEL_REPOSITORY`` (default ``model_repository/``, which ``make run`` exports first if missing). Stays in
the foreground until Ctrl-C (or SIGTERM), then shuts Serve and Ray down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def main() -> int:
    repository = Path(os.environ.get("MODEL_REPOSITORY", "model_repository")).resolve()
    missing = [m for m in ("translator", "classifier", "captioner") if not (repository / m / "1" / "config.json").exists()]
    if missing:
        print(f"error: {repository} has no {', '.join(missing)}; run `python -m export --out {repository}` first", file=sys.stderr)
        return 2
    port = int(os.environ.get("SERVE_HTTP_PORT", "8000"))
    grpc_port = int(os.environ.get("SERVE_GRPC_PORT", "9000"))
    metrics_port = int(os.environ.get("METRICS_PORT", "8080"))

    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from service.ingress import GRPC_SERVICERS, build_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(include_dashboard=False, logging_level="ERROR", configure_logging=False, _metrics_export_port=metrics_port)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICERS),
        )
        serve.run(build_app(str(repository)), name="inference", route_prefix="/", blocking=False)
        started = time.time()
        import requests

        while not stop.is_set():
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        if not stop.is_set():
            print(f"\nready in {time.time() - started:.0f} s: http://127.0.0.1:{port}  (OpenAPI: http://127.0.0.1:{port}/docs), "
                  f"gRPC inference.v1.Inference on 127.0.0.1:{grpc_port}, Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics")
            print("try:")
            print(f"  curl -s -X POST http://127.0.0.1:{port}/v1/translate -H 'content-type: application/json' "
                  "-d '{\"text\": \"Friday, March 14, 2025\"}'")
            print("Ctrl-C to stop.", flush=True)
        stop.wait()
    finally:
        print("shutting down…", flush=True)
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
