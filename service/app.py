"""``make run``: a local Ray instance with Serve, serving the three models from the ONNX model repository.

HTTP on ``SERVE_HTTP_PORT`` (default 8000) with OpenAPI docs at ``/docs``, gRPC ``inference.v1.Inference`` on
``SERVE_GRPC_PORT`` (default 9000), Prometheus metrics on ``METRICS_PORT`` (default 8080); the repository is read from
``MODEL_REPOSITORY`` (default ``model_repository/``, which ``make run`` exports first if missing). Stays in
the foreground until Ctrl-C (or SIGTERM), then shuts Serve and Ray down.

The application and its per-deployment settings come from ``deploy/serve_config.yaml`` (``SERVE_CONFIG``
overrides), the file ``serve run`` and the KubeRay RayService deploy too; here its host becomes 127.0.0.1, the
ports and repository follow the environment, and GPU requests are dropped when Ray sees no GPU.
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

    from service import config as serve_config

    serve_config.apply_serve_environment()  # before Ray starts: it reads them then
    import ray
    from ray import serve

    try:
        config = serve_config.load()
        serve_config.validate(config)
    except Exception as e:  # a broken SERVE_CONFIG: say so before starting anything
        print(f"error: serve config {os.environ.get('SERVE_CONFIG', serve_config.DEFAULT_CONFIG)}: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()
    ray.init(include_dashboard=False, logging_level="ERROR", configure_logging=False, _metrics_export_port=metrics_port)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        host = os.environ.get("SERVE_HTTP_HOST", "127.0.0.1")  # 0.0.0.0 in a container
        config, notes = serve_config.localize(config, repository=str(repository), host=host, http_port=port,
                                              grpc_port=grpc_port, gpus=ray.cluster_resources().get("GPU", 0),
                                              single_node=True, cpus=ray.cluster_resources().get("CPU", 1))
        for note in notes:
            print(note)
        serve_config.deploy(config)
        started = time.time()
        import requests

        while not stop.is_set():
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            app = serve.status().applications.get(serve_config.APP_NAME)
            if app is not None and app.status == "DEPLOY_FAILED":
                print(f"error: the application failed to deploy:\n{app.message}", file=sys.stderr)
                return 1
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
