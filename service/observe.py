"""``make observe``: the service plus a local Prometheus that scrapes it with the shipped config and rules.

    make observe        # then: Prometheus on http://127.0.0.1:9090 (alerts at /alerts), the service as with make run

Prometheus comes from Debian's ``prometheus`` package, unpacked into ``.tools/prometheus`` by ``make``
(``apt-get download`` + ``dpkg -x``, no root, no install scripts); ``PROMETHEUS_HOME`` points elsewhere, and a
``prometheus`` on PATH is used last. The shipped ``deploy/prometheus/prometheus.yml`` is used as it is, except
that its target follows ``METRICS_PORT``. Grafana is not run here: import ``deploy/grafana/inference.json``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "prometheus"


def prometheus_bin(name: str = "prometheus") -> Path | None:
    """``prometheus`` or ``promtool``: $PROMETHEUS_HOME, then ``.tools/prometheus`` (``make``), then PATH."""
    for home in (os.environ.get("PROMETHEUS_HOME"), ROOT / ".tools" / "prometheus"):
        if home and (Path(home) / "usr" / "bin" / name).exists():
            return Path(home) / "usr" / "bin" / name
    found = shutil.which(name)
    return Path(found) if found else None


def write_config(directory: Path, metrics_port: int) -> Path:
    """The shipped scrape config and rules in ``directory``, the target set to this metrics port."""
    directory.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [f"127.0.0.1:{metrics_port}"]
    for rules in config.get("rule_files", []):
        shutil.copy(SHIPPED / rules, directory / rules)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_prometheus(directory: Path, metrics_port: int, port: int = 9090) -> subprocess.Popen:
    """Start Prometheus on 127.0.0.1:``port`` and wait until it is ready (raises if it cannot start)."""
    import requests

    binary = prometheus_bin()
    if binary is None:
        raise FileNotFoundError("no prometheus binary: run `make .tools/prometheus` (Debian's package) or set PROMETHEUS_HOME")
    config = write_config(directory, metrics_port)
    log = open(directory / "prometheus.log", "w")
    proc = subprocess.Popen([str(binary), f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(directory / 'prometheus.log').read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("prometheus did not become ready in 60 s")


def main() -> int:
    metrics_port = int(os.environ.get("METRICS_PORT", "8080"))
    prom_port = int(os.environ.get("PROMETHEUS_PORT", "9090"))
    try:
        prom = start_prometheus(ROOT / ".tools" / "observe", metrics_port, prom_port)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Prometheus on http://127.0.0.1:{prom_port} (rules: /rules, alerts: /alerts), scraping 127.0.0.1:{metrics_port}; "
          "Grafana: import deploy/grafana/inference.json with this Prometheus as its data source", flush=True)
    try:
        from service.app import main as serve

        return serve()
    finally:
        os.killpg(prom.pid, signal.SIGTERM)
        prom.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
