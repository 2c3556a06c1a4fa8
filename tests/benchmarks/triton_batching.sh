#!/bin/bash
# Triton's own gain from dynamic batching on the shipped classifier, one image a request, 64 clients: the anchor for
# batching_bench.py's "≥ 4× batch-1 serving" (BENCHMARKS.md, batching). Triton (PyTriton, tests/benchmarks/
# triton_server.py) with its dynamic batcher and with --no-batching, `hey` over HTTP and `h2load` over gRPC
# (tests/benchmarks/h2load.py says how to install it without root), 10 s each after 3 s of warm-up, two rounds.
#
#   bash tests/benchmarks/triton_batching.sh [REPOSITORY]    # needs .bench/pytriton (frontend_bench.py creates it)
#
# With MAKE_RUN_URL set (e.g. http://127.0.0.1:8000 and gRPC on :9000, as `make run` serves), the same load goes to
# this service as well.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REPO=${1:-$ROOT/model_repository}
PY=$ROOT/.venv/bin/python
TRITON_PY=$ROOT/.bench/pytriton/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the request: OIP JSON for hey, a gRPC frame of ModelInferRequest for h2load (the same image)
"$PY" - "$WORK" <<'PY'
import json, sys
from pathlib import Path
sys.path[:0] = ["tests/benchmarks", "."]
import h2load, loadgen
from proto import open_inference_pb2 as pb
body = loadgen.payload("classifier")
Path(sys.argv[1], "body.json").write_text(json.dumps(body))
Path(sys.argv[1], "body.bin").write_bytes(h2load.grpc_frame(loadgen.grpc_request(pb, "classifier", body).SerializeToString()))
PY
# Triton's Python backend stub links against the interpreter's shared libpython
export LD_LIBRARY_PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))'):${LD_LIBRARY_PATH:-}"

measure() {  # name, HTTP infer URL, gRPC host:port, extra h2load header
  local http grpc
  hey -z 3s -c 64 -m POST -T application/json -D "$WORK/body.json" "$2" > /dev/null
  http=$(hey -z 10s -c 64 -m POST -T application/json -D "$WORK/body.json" "$2" | awk '/Requests\/sec/ {printf "%.0f req/s", $2} /^ +\[/ {printf " %s%s", $1, $2}')
  grpc=$(h2load -D 10 -c 64 -m 1 -d "$WORK/body.bin" -H "content-type: application/grpc" -H "te: trailers" ${4:+-H "$4"} \
         "http://$3/inference.GRPCInferenceService/ModelInfer" | awk '/^finished in/ {printf "%.0f req/s", $4} /^traffic/ {printf ", %s data bytes", $(NF-1)}')
  echo "$1: HTTP $http | gRPC $grpc"
}

cd "$ROOT"
for round in 1 2; do
  for mode in batching --no-batching; do
    "$TRITON_PY" tests/benchmarks/triton_server.py --repository "$REPO" --http-port 8100 --grpc-port 8101 --metrics-port 8102 \
      $([ "$mode" = --no-batching ] && echo --no-batching) > "$WORK/triton.log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do grep -q READY "$WORK/triton.log" && break; sleep 1; done
    measure "round $round, Triton, $mode" http://127.0.0.1:8100/v2/models/classifier/infer 127.0.0.1:8101
    kill -INT $pid; wait $pid 2> /dev/null || true; sleep 3
  done
  if [ -n "${MAKE_RUN_URL:-}" ]; then
    measure "round $round, this service" "$MAKE_RUN_URL/v2/models/classifier/infer" "$(echo "${MAKE_RUN_URL#http://}" | sed "s/:[0-9]*$/:9000/")" "application: inference"
  fi
done
