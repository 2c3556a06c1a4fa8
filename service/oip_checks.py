"""The Open Inference Protocol codec's checks of what a client sends (``service/oip.py`` decodes and encodes): every
value is checked before a model runs, and refused as a ``ProtocolError`` (400 / INVALID_ARGUMENT, 413 for sizes)
that names it. Nothing a client sends may reach the codec's encoding or numpy unchecked: a lone surrogate, a number
outside its datatype, a huge shape or data nested past numpy's limit each once turned a bad request into a 500."""

from __future__ import annotations

import numpy as np

from service.errors import Kind, ServiceError

MAX_RANK = 64  # dimensions of a shape and levels of nested ``data`` (numpy's own limit)
MAX_ELEMENTS = 64 * 4096 * 4096

NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64,
         "INT8": np.int8, "INT16": np.int16, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
         "UINT64": np.uint64, "BOOL": np.bool_}


_KINDS = {400: Kind.INVALID, 404: Kind.NOT_FOUND, 413: Kind.TOO_LARGE, 422: Kind.OUT_OF_RANGE}


class ProtocolError(ServiceError):
    """A request the protocol cannot accept, as a ``ServiceError`` of the kind its HTTP ``status`` names."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(_KINDS[status], "not_found" if status == 404 else "invalid_tensor", message)


def show(value) -> str:
    """A client's value in a message: short, and encodable whatever it holds (``repr`` escapes a lone surrogate)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        short = len(value) <= 8 and not any(isinstance(x, (list, dict)) for x in value)
        return f"[{', '.join(map(show, value))}]" if short else f"an array of {len(value)}"
    if isinstance(value, int) and abs(value) >= 10**30:
        return "a huge integer"
    text = repr(value[:61] if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def string(value, what: str) -> str:
    """A JSON string the codec encodes again (a name, a datatype, the ``id``): no lone UTF-16 surrogate."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, got {show(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} {show(value)} is not valid Unicode (a lone surrogate)") from None
    return value


def count(shape: list[int], name: str) -> int:
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{name}: shape must be a list of at most {MAX_RANK} non-negative integers, "
                            f"got {show(shape)}")
    n, bound = 1, 1  # bound: the product with zero dimensions as 1, so that a reshape can never overflow
    for d in shape:
        n, bound = n * d, bound * max(d, 1)
        if bound > MAX_ELEMENTS:
            raise ProtocolError(f"{name}: shape {show(shape)} is over the limit of {MAX_ELEMENTS} elements", 413)
    return n


def flatten(data, name: str) -> list:
    """Row-major ``data``, flat or nested at most ``MAX_RANK`` levels, as a flat list (a level a pass: no recursion)."""
    flat, depth = data if isinstance(data, list) else [data], 1
    while any(isinstance(x, list) for x in flat):
        if (depth := depth + 1) > MAX_RANK:
            raise ProtocolError(f"{name}: data nested too deeply (more than {MAX_RANK} levels)")
        flat = [y for x in flat for y in (x if isinstance(x, list) else (x,))]
    return flat


def in_range(name: str, datatype: str, values: list) -> None:
    """Integer elements (JSON numbers or gRPC typed contents) within their datatype's range."""
    info, low, high = np.iinfo(NUMPY[datatype]), min(values, default=0), max(values, default=0)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise ProtocolError(f"{name}: {datatype} elements must be within {info.min}..{info.max}, got {bad}")


def parameters(spec: dict, where: str, flag: str | None = None) -> dict:
    """``parameters`` of the request, an input or an output: absent, null or an object of strings, numbers and
    booleans (the protocol's ``$parameter``); ``flag`` (``binary_data``, ``binary_data_output``) a boolean if there."""
    params = spec.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}parameters must be an object, got {show(params)}")
    for key, value in params.items():
        if isinstance(value, (list, dict)):
            raise ProtocolError(f"{where}parameters: {show(key)} must be a string, number or boolean, "
                                f"got {show(value)}")
    if flag in params and not isinstance(params[flag], bool):
        raise ProtocolError(f"{where}parameters: {flag} must be a boolean, got {show(params[flag])}")
    return params


def known(requested: list[str], known, model: str) -> None:
    unknown = [r for r in requested if r not in known]
    if unknown:
        raise ProtocolError(f"unknown output {show(unknown[0])} for {model}; outputs: {', '.join(known)}")
