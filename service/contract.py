"""The request contract: a task request, whatever protocol carried it, becomes one validated job here.

Every limit, default and range of the task API lives in this module, tied to the models' own configs (the
decoders' positions, the encoders' image sizes, the labels); every refusal is a ``service.errors.ServiceError``.
The protocol adapters (``service/front/``) only map their wire format onto these calls and the jobs' results back.
Pure Python and numpy: unit-tested without Ray or ONNX Runtime (``tests/test_contract.py``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from service import errors
from service.decoding import DecodingOptions
from service.images import (
    MAX_SIDE,
    BadImage,
    ImageTooLarge,
    digit_array,
    digit_input,
    picture_array,
    picture_input,
    scene_input,
)

MODELS = ("translator", "classifier", "captioner")  # the shipped models: every repository has them
TASKS = {"translator": "translate", "classifier": "classify", "captioner": "caption"}
TASK_OF = {"translator": "translation", "classifier": "classification", "captioner": "captioning"}
DEFAULT_MODEL = {task: name for name, task in TASK_OF.items()}  # what a request without "model" gets
SERVED_EXTRA_TASKS = ("classification", "translation", "captioning")  # tasks a repository's other models (imported checkpoints) may have


@dataclasses.dataclass(frozen=True)
class Range:
    low: int
    high: int
    default: int

    def check(self, value, field: str) -> int:
        """``value`` (None: the default) if it is an integer within the range, else 422 naming ``field``."""
        if value is None:
            return self.default
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not self.low <= value <= self.high:
            raise errors.out_of_range(f"{field} must be an integer within {self.low}..{self.high}, got {value!r}")
        return int(value)


MAX_TEXT_CHARS = 512  # characters of one text
MAX_ITEMS = 64  # texts or images in one request
BEAM_SIZE = Range(1, 8, 1)
TRANSLATE_MAX_NEW_TOKENS = Range(1, 256, 128)  # the API's range; the decoder's positions bound it further (clamped)
CAPTION_MAX_NEW_TOKENS = Range(1, 256, 40)
TOP_K = Range(1, 10, 5)
TIMEOUT_HEADER = "X-Request-Timeout-Ms"


class Deadline:
    """When a request must be answered by (monotonic seconds), read from its ``X-Request-Timeout-Ms`` header or its
    gRPC deadline as it arrived; ``left_s()`` is what remains. Time spent before a model call (parsing, image decoding)
    counts against it."""

    __slots__ = ("at",)

    def __init__(self, seconds: float, now: float | None = None) -> None:
        self.at = (time.monotonic() if now is None else now) + seconds

    def left_s(self, now: float | None = None) -> float:
        return self.at - (time.monotonic() if now is None else now)

    @classmethod
    def from_header(cls, raw: str | None) -> Deadline | None:
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise errors.invalid("invalid_header", f"{TIMEOUT_HEADER}: not a number") from None
        if not value > 0 or value == float("inf"):
            raise errors.invalid("invalid_header", f"{TIMEOUT_HEADER}: must be a positive number of milliseconds")
        return cls(value / 1000.0)


@dataclasses.dataclass(frozen=True)
class TranslateJob:
    texts: list[str]
    options: DecodingOptions
    return_attention: bool = False
    deadline: Deadline | None = None
    model: str = "translator"


@dataclasses.dataclass(frozen=True)
class ClassifyJob:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1], preprocessed as the model takes them
    top_k: int = TOP_K.default
    deadline: Deadline | None = None
    model: str = "classifier"


@dataclasses.dataclass(frozen=True)
class CaptionJob:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]: (N, 1, 32, 32) for the shipped captioner
    options: DecodingOptions
    return_attention: bool = False
    deadline: Deadline | None = None
    model: str = "captioner"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the contract needs of one model, from its ``config.json``."""

    name: str
    positions: int | None = None  # decoder positions: tokens one sequence can generate at most
    image_size: int | None = None
    labels: tuple[str, ...] = ()
    task: str = ""
    processing: dict | None = None  # an imported checkpoint's own image processing (size, color, resample)

    @classmethod
    def from_config(cls, name: str, config: dict) -> ModelInfo:
        decoder, encoder = config.get("decoder") or {}, config.get("encoder") or {}
        image_size = encoder.get("image_size") or (config.get("model_config") or {}).get("image_size")
        task = config.get("task") or TASK_OF.get(name)
        if task is None:
            raise ValueError(f"model '{name}': its config.json names no task")
        return cls(name, decoder.get("max_len"), image_size, tuple(config.get("labels") or ()), task, config.get("processing"))

    @property
    def channels(self) -> int:
        return self.processing["channels"] if self.processing else 1


def repository_configs(repository: str | Path) -> dict[str, dict]:
    """The models of a repository this service serves: the shipped three first, then the others by name."""
    return repository_models(repository)[0]


def repository_models(repository: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Every model of a repository (a directory ``NAME/1/config.json`` each): the configs of those served, and why
    each other one is not (an imported model of a task not yet served for the repository's own models). The
    service starts with the rest and logs the reasons; it never refuses to start over one such model."""
    repository = Path(repository)
    configs = {m: json.loads((repository / m / "1" / "config.json").read_text()) for m in MODELS}
    skipped: dict[str, str] = {}
    for path in sorted(repository.glob("*/1/config.json")):
        name = path.parent.parent.name
        if name in configs or name.startswith("."):
            continue
        config = json.loads(path.read_text())
        if config.get("task") not in SERVED_EXTRA_TASKS:
            skipped[name] = (f"task {config.get('task')!r} is not served for a model of the repository's own yet "
                             f"(served: {', '.join(SERVED_EXTRA_TASKS)}, and the shipped three)")
            continue
        configs[name] = config
    return configs, skipped


def b64(data, field: str) -> bytes:
    if not isinstance(data, str):
        raise errors.out_of_range(f"{field}: must be a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise errors.invalid("invalid_base64", f"{field}: not valid base64") from None


def counted(items, field: str) -> list:
    """``items`` as a list if there are 1..MAX_ITEMS of them (422 for none, 413 for too many)."""
    items = list(items)
    if not items:
        raise errors.out_of_range(f"{field}: must not be empty")
    if len(items) > MAX_ITEMS:
        raise errors.too_large("too_many_items", f"{field}: {len(items)} items; the limit is {MAX_ITEMS}")
    return items


def one_or_many(single, many, field: str) -> list:
    """A request's ``field`` or ``fields`` (exactly one of them) as a list."""
    if (single is None) == (many is None):
        raise errors.out_of_range(f"send exactly one of '{field}' and '{field}s'")
    return counted([single] if many is None else many, f"{field}s")


def check_text(text, field: str) -> str:
    if not isinstance(text, str):
        raise errors.out_of_range(f"{field}: must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise errors.too_large("text_too_long", f"{field}: {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    if not text.strip():
        raise errors.invalid("empty_text", f"{field}: empty")
    return text


def _flag(value, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise errors.out_of_range(f"{field} must be true or false, got {value!r}")
    return value


class Contract:
    """The jobs of the models in one repository (``from_repository``), or of the configs given."""

    def __init__(self, configs: dict[str, dict]) -> None:
        self.models = {name: ModelInfo.from_config(name, config) for name, config in configs.items()}

    @classmethod
    def from_repository(cls, repository: str | Path) -> Contract:
        return cls(repository_configs(repository))

    def model(self, name: str) -> ModelInfo:
        info = self.models.get(name)
        if info is None:
            raise errors.not_found(f"unknown model '{name}'; models: {', '.join(self.models)}")
        return info

    def for_task(self, model, task: str) -> str:
        """The model a request names (``None``: the shipped model of ``task``): 404 if unknown, 422 if it does
        another task."""
        if model is None:
            return DEFAULT_MODEL[task]
        if not isinstance(model, str):
            raise errors.out_of_range(f"model must be a string, got {model!r}")
        info = self.model(model)
        if info.task != task:
            serving = [n for n, i in self.models.items() if i.task == task]
            raise errors.out_of_range(f"model '{model}' does {info.task}, not {task}; {task} models: {', '.join(serving)}")
        return model

    def names(self, task: str) -> list[str]:
        return [n for n, i in self.models.items() if i.task == task]

    def _options(self, model: str, beam_size, max_new_tokens, tokens: Range, stream: bool) -> DecodingOptions:
        beam = BEAM_SIZE.check(beam_size, "beam_size")
        if stream and beam != 1:
            raise errors.out_of_range("beam_size: streaming decodes greedily (1)")
        asked = tokens.check(max_new_tokens, "max_new_tokens")
        positions = self.model(model).positions
        return DecodingOptions(beam_size=beam, max_new_tokens=min(asked, positions) if positions else asked)

    def translate(self, texts, *, beam_size=None, max_new_tokens=None, return_attention=None, model=None,
                  deadline: Deadline | None = None, stream: bool = False, field: str = "texts") -> TranslateJob:
        """``texts``: the request's texts (1..MAX_ITEMS; a stream takes exactly one). ``max_new_tokens`` beyond the
        decoder's positions is clamped to them: that translation finishes with ``length``. ``model``: a translation
        model of the repository (None: the shipped translator)."""
        model = self.for_task(model, "translation")
        texts = counted(texts, field)
        if stream and len(texts) != 1:
            raise errors.out_of_range(f"{field}: a stream translates exactly one text, got {len(texts)}")
        checked = [check_text(t, f"{field}[{i}]" if len(texts) > 1 or field == "texts" else field) for i, t in enumerate(texts)]
        if stream and return_attention:
            raise errors.out_of_range("return_attention: not available on a stream")
        options = self._options(model, beam_size, max_new_tokens, TRANSLATE_MAX_NEW_TOKENS, stream)
        return TranslateJob(checked, options, _flag(return_attention, "return_attention"), deadline, model)

    def _images(self, model: str, payloads, field: str, decode) -> np.ndarray:
        """Image bytes → one ``(N, C, S, S)`` array, each decoded and validated once."""
        payloads = counted(payloads, field)
        info = self.model(model)
        size = info.image_size
        out = np.empty((len(payloads), info.channels, size, size), dtype=np.float32)
        for i, data in enumerate(payloads):
            try:
                out[i] = decode(data, size)
            except ImageTooLarge as e:
                raise errors.too_large("image_too_large", f"{field}[{i}]: {e}") from None
            except BadImage as e:
                raise errors.invalid("invalid_image", f"{field}[{i}]: {e}") from None
        return out

    def classify(self, payloads, *, top_k=None, model=None, deadline: Deadline | None = None, field: str = "images") -> ClassifyJob:
        """Encoded pictures (PNG/JPEG/BMP, any size): of digits for the shipped classifier; for an imported model,
        converted and resized as its own image processor does."""
        top_k = TOP_K.check(top_k, "top_k")
        model = self.for_task(model, "classification")
        return ClassifyJob(self._images(model, payloads, field, self._decoder_of(model, digit_input)), top_k, deadline, model)

    def _decoder_of(self, model: str, shipped):
        """How ``model`` turns image bytes into its input: ``shipped`` (the shipped models' own), or, for an imported
        model, its image processor's size, colour and filter."""
        p = self.model(model).processing
        if p is None:
            return shipped
        return lambda data, _size: picture_input(data, tuple(p["size"]), p["color"], p.get("resample"))

    def classify_array(self, images: np.ndarray, *, top_k=None, model=None, deadline: Deadline | None = None,
                       field: str = "images") -> ClassifyJob:
        """``[N, C, H, W]`` pictures in [0, 1] (the Open Inference Protocol's FP32 input), any size: grayscale
        (C = 1) for the shipped classifier, the model's own channels for an imported one."""
        top_k = TOP_K.check(top_k, "top_k")
        model = self.for_task(model, "classification")
        info = self.model(model)
        if images.ndim != 4 or images.shape[1] != info.channels:
            raise errors.invalid("invalid_tensor", f"{field}: shape must be [N, {info.channels}, H, W], got {list(images.shape)}")
        counted(range(images.shape[0]), field)
        if min(images.shape[2:]) < 1:  # no picture: bad input, not one over a limit
            raise errors.invalid("invalid_tensor", f"{field}: {images.shape[2]}×{images.shape[3]}; sides must be 1..{MAX_SIDE}")
        if max(images.shape[2:]) > MAX_SIDE:
            raise errors.too_large("image_too_large", f"{field}: {images.shape[2]}×{images.shape[3]}; sides must be 1..{MAX_SIDE}")
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise errors.invalid("invalid_tensor", f"{field}: values must be finite and within [0, 1]")
        if info.processing is None:
            size = info.image_size
            return ClassifyJob(np.stack([digit_array(np.asarray(x[0], np.float32), size) for x in images]), top_k, deadline, model)
        p = info.processing
        return ClassifyJob(np.stack([picture_array(np.asarray(x, np.float32), tuple(p["size"]), p.get("resample")) for x in images]),
                           top_k, deadline, model)

    def caption(self, payloads, *, beam_size=None, max_new_tokens=None, return_attention=None, model=None,
                deadline: Deadline | None = None, field: str = "image") -> CaptionJob:
        """Encoded pictures: scenes for the shipped captioner; for an imported model, converted and resized as its own
        image processor does. ``max_new_tokens`` beyond the decoder's positions (48 for the shipped captioner) is
        clamped."""
        model = self.for_task(model, "captioning")
        options = self._options(model, beam_size, max_new_tokens, CAPTION_MAX_NEW_TOKENS, False)
        images = self._images(model, payloads, field, self._decoder_of(model, scene_input))
        return CaptionJob(images, options, _flag(return_attention, "return_attention"), deadline, model)

    def limits(self) -> dict:
        """What a client may send, per model (``/v2/models/{name}`` metadata, the README)."""
        out = {}
        for name, info in self.models.items():
            entry: dict = {"max_items": MAX_ITEMS}
            if info.positions:
                tokens = TRANSLATE_MAX_NEW_TOKENS if info.task == "translation" else CAPTION_MAX_NEW_TOKENS
                entry |= {"beam_size": [BEAM_SIZE.low, BEAM_SIZE.high], "max_new_tokens": [tokens.low, tokens.high],
                          "max_new_tokens_default": tokens.default, "max_new_tokens_decoded": info.positions}
            if info.task == "translation":
                entry["max_text_chars"] = MAX_TEXT_CHARS
            if info.task == "classification":
                entry["top_k"] = [TOP_K.low, TOP_K.high]
            out[name] = entry
        return out
