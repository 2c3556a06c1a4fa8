"""The Open Inference Protocol (KServe v2 / Triton's HTTP and gRPC inference API) for the repository's models.

Transport-free pieces used by the ingress: model metadata, decoding request tensors (HTTP JSON, HTTP binary-data
extension, gRPC typed contents or raw bytes) into numpy / byte strings, and encoding outputs back.

Models as the protocol sees them (every model has the single version ``1``):

* ``classifier``: input ``images`` FP32 ``[N, 1, H, W]`` (grayscale in [0, 1], any size: preprocessed like an
  uploaded picture) **or** input ``image_bytes`` BYTES ``[N]`` (encoded PNG/JPEG/BMP) — send exactly one;
  outputs ``probabilities`` FP32 ``[N, 10]`` (label order ``0``…``9``) and ``label`` BYTES ``[N]`` (the top one).
* ``translator``: input ``text`` BYTES ``[N]`` (UTF-8); outputs ``translation`` BYTES ``[N]``, ``tokens`` INT32 ``[N]``.
  Request parameters ``beam_size`` and ``max_new_tokens`` as in the task API.
* ``captioner``: input ``image`` BYTES ``[N]`` (encoded scenes); output ``caption`` BYTES ``[N]``. Same parameters.

* an imported classifier (``register``): as ``classifier``, with ``images`` ``[N, C, H, W]`` of its own channels and
  ``probabilities`` ``[N, labels]``; an imported translator: as ``translator``.

In HTTP JSON, a BYTES element is a JSON string: UTF-8 text for ``text``, base64 for image inputs (binary data, the
default of ``tritonclient.http``, carries raw bytes instead).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass

import numpy as np

from service.errors import Kind, ServiceError

SERVER = {"name": "attention-serving", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
PLATFORM = "onnxruntime_onnx"
VERSION = "1"
MAX_ITEMS = 64

MODELS = {
    "classifier": {
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 1, -1, -1]},
                   {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
    },
    "translator": {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "translation", "datatype": "BYTES", "shape": [-1]},
                    {"name": "tokens", "datatype": "INT32", "shape": [-1]}],
    },
    "captioner": {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "caption", "datatype": "BYTES", "shape": [-1]}],
    },
}

SHIPPED = dict(MODELS)


def register(contract) -> None:
    """The repository's imported models beside the shipped three: translators and captioners as the shipped ones; classifiers (called when a process's models are bound):
    input ``images`` FP32 ``[N, C, H, W]`` in [0, 1] with the model's channels, or ``image_bytes``; outputs as the
    shipped classifier's, with the model's own labels."""
    MODELS.clear()
    MODELS.update(SHIPPED)
    for name, info in contract.models.items():
        if name not in SHIPPED and info.task == "translation":
            MODELS[name] = SHIPPED["translator"]
        if name not in SHIPPED and info.task == "captioning":
            MODELS[name] = SHIPPED["captioner"]
        if name not in SHIPPED and info.task == "classification":
            MODELS[name] = {
                "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, info.channels, -1, -1]},
                           {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(info.labels)]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]}],
            }


NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64,
         "INT8": np.int8, "INT16": np.int16, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "BOOL": np.bool_}
GRPC_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT16": "int_contents",
              "INT8": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
              "UINT32": "uint_contents", "UINT64": "uint64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


_KINDS = {400: Kind.INVALID, 404: Kind.NOT_FOUND, 413: Kind.TOO_LARGE, 422: Kind.OUT_OF_RANGE}


class ProtocolError(ServiceError):
    """A request the protocol cannot accept, as a ``ServiceError`` of the kind its HTTP ``status`` names."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(_KINDS[status], "not_found" if status == 404 else "invalid_tensor", message)


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # numeric: array of ``shape``; BYTES: flat list of byte strings


def metadata(name: str) -> dict:
    model = MODELS.get(name)
    if model is None:
        raise ProtocolError(f"unknown model '{name}'; models: {', '.join(MODELS)}", 404)
    return {"name": name, "versions": [VERSION], "platform": PLATFORM, **model}


def check_version(version: str | None) -> None:
    if version not in (None, "", VERSION):
        raise ProtocolError(f"unknown version '{version}'; the only version is {VERSION}", 404)


# --------------------------------------------------------------------------------------------- decoding


def _count(shape: list[int], name: str) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{name}: shape must be a list of non-negative integers, got {shape!r}")
    n = 1
    for d in shape:
        n *= d
    if n > 64 * 4096 * 4096:
        raise ProtocolError(f"{name}: {n} elements is over the limit", 413)
    return n


def _unpack_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES wire format: each element is a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ProtocolError(f"{name}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise ProtocolError(f"{name}: BYTES element of {n} bytes runs past the data")
        out.append(raw[at : at + n])
        at += n
    if len(out) != count:
        raise ProtocolError(f"{name}: {len(out)} BYTES elements for a shape of {count}")
    return out


def _from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    count = _count(shape, name)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, _unpack_bytes(raw, count, name))
    if datatype not in NUMPY:
        raise ProtocolError(f"{name}: unsupported datatype {datatype}")
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"{name}: {len(raw)} bytes of data for shape {shape} of {datatype}")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def _flatten(data) -> list:
    if isinstance(data, list):
        out = []
        for item in data:
            out.extend(_flatten(item) if isinstance(item, list) else [item])
        return out
    return [data]


def _from_json(name: str, datatype: str, shape: list[int], data, b64: bool) -> Tensor:
    count = _count(shape, name)
    flat = _flatten(data)
    if len(flat) != count:
        raise ProtocolError(f"{name}: {len(flat)} elements of data for shape {shape}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"{name}: BYTES data must be JSON strings")
        if b64:
            try:
                return Tensor(name, datatype, shape, [base64.b64decode(x, validate=True) for x in flat])
            except (binascii.Error, ValueError):
                raise ProtocolError(f"{name}: image elements in JSON must be base64") from None
        return Tensor(name, datatype, shape, [x.encode() for x in flat])
    if datatype not in NUMPY:
        raise ProtocolError(f"{name}: unsupported datatype {datatype}")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) or datatype == "BOOL" for x in flat):
        raise ProtocolError(f"{name}: {datatype} data must be numbers")
    try:
        return Tensor(name, datatype, shape, np.asarray(flat, dtype=NUMPY[datatype]).reshape(shape))
    except (ValueError, OverflowError) as e:
        raise ProtocolError(f"{name}: {e}") from None


BASE64_INPUTS = {"image_bytes", "image"}


def parse_http(body: bytes, header_length: str | None) -> tuple[dict, list[Tensor]]:
    """An HTTP infer request (JSON, or JSON + binary tensor data) → (the JSON header, input tensors)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError("Inference-Header-Content-Length: not an integer") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {n} is outside the body ({len(body)} bytes)")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"request body is not valid JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("'inputs' must be a non-empty list")
    tensors, at = [], 0
    for i, spec in enumerate(request["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("datatype"), str):
            raise ProtocolError(f"inputs[{i}]: needs 'name', 'datatype' and 'shape'")
        name, datatype, shape = spec["name"], spec["datatype"], spec.get("shape")
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"{name}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise ProtocolError(f"{name}: binary_data_size {size!r} does not fit the binary data")
            tensors.append(_from_raw(name, datatype, shape, binary[at : at + size]))
            at += size
        elif "data" in spec:
            tensors.append(_from_json(name, datatype, shape, spec["data"], name in BASE64_INPUTS))
        else:
            raise ProtocolError(f"{name}: no 'data' and no binary_data_size")
    if at != len(binary):
        raise ProtocolError(f"{len(binary) - at} bytes of binary data belong to no input")
    return request, tensors


def parse_grpc(request) -> list[Tensor]:
    """A ``ModelInferRequest`` → input tensors (typed ``contents`` or ``raw_input_contents``)."""
    if not request.inputs:
        raise ProtocolError("'inputs' must not be empty")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors = []
    for i, spec in enumerate(request.inputs):
        shape = list(spec.shape)
        if raw:
            tensors.append(_from_raw(spec.name, spec.datatype, shape, raw[i]))
            continue
        field = GRPC_FIELD.get(spec.datatype)
        if field is None:
            raise ProtocolError(f"{spec.name}: unsupported datatype {spec.datatype}")
        values = list(getattr(spec.contents, field))
        if len(values) != _count(shape, spec.name):
            raise ProtocolError(f"{spec.name}: {len(values)} elements of data for shape {shape}")
        if spec.datatype == "BYTES":
            tensors.append(Tensor(spec.name, "BYTES", shape, values))
        else:
            tensors.append(Tensor(spec.name, spec.datatype, shape, np.asarray(values, dtype=NUMPY[spec.datatype]).reshape(shape)))
    return tensors


def int_parameter(params: dict, name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, dict):  # gRPC InferParameter as a dict
        value = value.get("int64_param", value.get("uint64_param", default))
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"parameter {name} must be an integer within {low}..{high}, got {value!r}", 422)
    return value


def grpc_parameters(params) -> dict:
    """``map<string, InferParameter>`` → plain values."""
    out = {}
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, kind) if kind else None
    return out


def only_input(tensors: list[Tensor], model: str) -> Tensor:
    """The one input the request must carry (names and types as the model's metadata says)."""
    allowed = {t["name"]: t["datatype"] for t in MODELS[model]["inputs"]}
    if len(tensors) != 1:
        raise ProtocolError(f"{model} takes exactly one input, one of {', '.join(allowed)}; got {len(tensors)}")
    (t,) = tensors
    if t.name not in allowed:
        raise ProtocolError(f"unknown input '{t.name}' for {model}; inputs: {', '.join(allowed)}")
    if t.datatype != allowed[t.name]:
        raise ProtocolError(f"{t.name}: datatype must be {allowed[t.name]}, got {t.datatype}")
    n = len(t.data) if isinstance(t.data, list) else t.data.shape[0] if t.data.ndim else 0
    if len(t.shape) != len(MODELS[model]["inputs"][list(allowed).index(t.name)]["shape"]):
        raise ProtocolError(f"{t.name}: shape must have rank {len(MODELS[model]['inputs'][list(allowed).index(t.name)]['shape'])}, got {t.shape}")
    if n == 0:
        raise ProtocolError(f"{t.name}: no elements")
    if n > MAX_ITEMS:
        raise ProtocolError(f"{t.name}: {n} items; the limit is {MAX_ITEMS}", 413)
    return t


# --------------------------------------------------------------------------------------------- encoding


@dataclass
class Output:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


def _pack(out: Output) -> bytes:
    if out.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(x)) + x for x in out.data)
    return np.ascontiguousarray(out.data, dtype=np.dtype(NUMPY[out.datatype]).newbyteorder("<")).tobytes()


def select(outputs: list[Output], requested: list[str] | None, model: str) -> list[Output]:
    if not requested:
        return outputs
    known = {o.name: o for o in outputs}
    unknown = [r for r in requested if r not in known]
    if unknown:
        raise ProtocolError(f"unknown output '{unknown[0]}' for {model}; outputs: {', '.join(known)}")
    return [known[r] for r in requested]


def http_response(model: str, request: dict, outputs: list[Output]) -> tuple[bytes, dict]:
    """(body, headers) of an HTTP infer response; binary tensor data where the request asked for it."""
    wanted = request.get("outputs") or []
    names = [o.get("name") for o in wanted if isinstance(o, dict)] or None
    chosen = select(outputs, names, model)
    default_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    binary_of = {o.get("name"): bool((o.get("parameters") or {}).get("binary_data", default_binary)) for o in wanted if isinstance(o, dict)}
    head = {"model_name": model, "model_version": VERSION, "outputs": []}
    if "id" in request:
        head["id"] = request["id"]
    blobs = []
    for out in chosen:
        entry = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if binary_of.get(out.name, default_binary):
            blob = _pack(out)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.datatype == "BYTES":
            entry["data"] = [x.decode("utf-8", errors="replace") for x in out.data]
        else:
            entry["data"] = np.asarray(out.data).reshape(-1).tolist()
        head["outputs"].append(entry)
    body = json.dumps(head, ensure_ascii=False).encode()
    if not blobs:
        return body, {"content-type": "application/json"}
    return body + b"".join(blobs), {"content-type": "application/octet-stream", "Inference-Header-Content-Length": str(len(body))}


def grpc_response(pb, model: str, request_id: str, requested: list[str], outputs: list[Output]):
    response = pb.ModelInferResponse(model_name=model, model_version=VERSION, id=request_id)
    for out in select(outputs, requested or None, model):
        response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        response.raw_output_contents.append(_pack(out))
    return response
