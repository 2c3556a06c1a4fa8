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
default of ``tritonclient.http``, carries raw bytes instead); integer elements are JSON integers within the datatype's
range, BOOL ones booleans. All a client sends is checked before a model runs (else 400 / INVALID_ARGUMENT naming it):
``id`` is a string (null: no id; a number is refused, not coerced), each ``parameters`` an object of strings, numbers
and booleans, ``outputs`` a list of objects with a string ``name``, strings valid Unicode (no lone surrogate).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass

import numpy as np

from service import oip_checks as check
from service.oip_checks import NUMPY, ProtocolError  # noqa: F401 (the codec's names: its callers use them)

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


GRPC_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT16": "int_contents",
              "INT8": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
              "UINT32": "uint_contents", "UINT64": "uint64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


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
    count = check.count(shape, name)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, _unpack_bytes(raw, count, name))
    if datatype not in NUMPY:
        raise ProtocolError(f"{name}: unsupported datatype {datatype}")
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"{name}: {len(raw)} bytes of data for shape {shape} of {datatype}")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def _from_json(name: str, datatype: str, shape: list[int], data, b64: bool) -> Tensor:
    count = check.count(shape, name)
    flat = check.flatten(data, name)
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
        try:
            return Tensor(name, datatype, shape, [x.encode() for x in flat])
        except UnicodeEncodeError:
            for i, x in enumerate(flat):
                check.string(x, f"{name}[{i}]")
    if datatype not in NUMPY:
        raise ProtocolError(f"{name}: unsupported datatype {datatype}")
    kind = np.dtype(NUMPY[datatype]).kind
    if kind == "b" and not all(isinstance(x, bool) for x in flat):
        raise ProtocolError(f"{name}: BOOL data must be JSON booleans")
    if kind in "iu" and not all(type(x) is int for x in flat):
        raise ProtocolError(f"{name}: {datatype} data must be JSON integers")
    if kind == "f" and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
        raise ProtocolError(f"{name}: {datatype} data must be numbers")
    if kind in "iu":
        check.in_range(name, datatype, flat)
    try:
        return Tensor(name, datatype, shape, np.asarray(flat, dtype=NUMPY[datatype]).reshape(shape))
    except (ValueError, OverflowError) as e:
        raise ProtocolError(f"{name}: {e}") from None


BASE64_INPUTS = {"image_bytes", "image"}


def _outputs(request: dict, model: str | None) -> None:
    """The requested ``outputs``, checked before anything runs (names against ``model``'s when it is given)."""
    outputs = request.get("outputs")
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ProtocolError(f"'outputs' must be a list of objects, got {check.show(outputs)}")
    for i, o in enumerate(outputs):
        check.string(o.get("name"), f"outputs[{i}].name")
        check.parameters(o, f"outputs[{i}].", "binary_data")
    if model in MODELS:
        check.known([o["name"] for o in outputs], [o["name"] for o in MODELS[model]["outputs"]], model)


def parse_http(body: bytes, header_length: str | None, model: str | None = None) -> tuple[dict, list[Tensor]]:
    """An HTTP infer request (JSON, or JSON + binary tensor data) → (the JSON header, input tensors). The header is
    checked whole (``id``, ``parameters``, ``outputs``; output names too when ``model`` is given), so that
    ``http_response`` can trust it."""
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
    except RecursionError:
        raise ProtocolError("request body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise ProtocolError(f"request body is not valid JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("'inputs' must be a non-empty list")
    if request.get("id") is not None:
        check.string(request["id"], "'id'")
    check.parameters(request, "", "binary_data_output")
    _outputs(request, model)
    tensors, at = [], 0
    for i, spec in enumerate(request["inputs"]):
        if not isinstance(spec, dict):
            raise ProtocolError(f"inputs[{i}]: needs 'name', 'datatype' and 'shape'")
        name = check.string(spec.get("name"), f"inputs[{i}].name")
        datatype, shape = check.string(spec.get("datatype"), f"{name}: datatype"), spec.get("shape")
        size = check.parameters(spec, f"{name}: ").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or at + size > len(binary):
                raise ProtocolError(f"{name}: binary_data_size {check.show(size)} does not fit the binary data")
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
    if (model := request.model_name) in MODELS:
        check.known([o.name for o in request.outputs], [o["name"] for o in MODELS[model]["outputs"]], model)
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
        if len(values) != check.count(shape, spec.name):
            raise ProtocolError(f"{spec.name}: {len(values)} elements of data for shape {shape}")
        if spec.datatype == "BYTES":
            tensors.append(Tensor(spec.name, "BYTES", shape, values))
        else:
            if np.dtype(NUMPY[spec.datatype]).kind in "iu":  # INT8/16 travel as int32, UINT8/16 as uint32
                check.in_range(spec.name, spec.datatype, values)
            tensors.append(Tensor(spec.name, spec.datatype, shape, np.asarray(values, dtype=NUMPY[spec.datatype]).reshape(shape)))
    return tensors


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
    if n == 0 or 0 in t.shape:  # a zero-size dimension (an image 0 pixels wide) is no input, not a too large one
        raise ProtocolError(f"{t.name}: no elements (shape {t.shape})")
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
    check.known(requested, known, model)
    return [known[r] for r in requested]


def http_response(model: str, request: dict, outputs: list[Output]) -> tuple[bytes, dict]:
    """(body, headers) of an HTTP infer response; binary tensor data where the request asked for it. ``request``: the
    header as ``parse_http`` checked it."""
    wanted = request.get("outputs") or []
    chosen = select(outputs, [o["name"] for o in wanted] or None, model)
    default_binary = (request.get("parameters") or {}).get("binary_data_output", False)
    binary_of = {o["name"]: (o.get("parameters") or {}).get("binary_data", default_binary) for o in wanted}
    head = {"model_name": model, "model_version": VERSION, "outputs": []}
    if isinstance(request.get("id"), str):
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
