"""Turning a client's image bytes into model inputs, with clear errors for anything that is not an image."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 4 * 2**20
MAX_SIDE = 4096
FORMATS = {"PNG", "JPEG", "BMP"}


class BadImage(ValueError):
    """The bytes are not a usable PNG/JPEG/BMP image (the message says why)."""


class ImageTooLarge(BadImage):
    """The image is over a size limit (bytes or pixels a side): 413 rather than 400."""


def decode(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in FORMATS:
            raise BadImage(f"unsupported image format {image.format}; send PNG, JPEG or BMP")
        if max(image.size) > MAX_SIDE:
            raise ImageTooLarge(f"image is {image.size[0]}×{image.size[1]} px; the limit is {MAX_SIDE} px a side")
        image.load()
    except BadImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"not a readable PNG/JPEG/BMP image ({e.__class__.__name__})") from None
    return image


def digit_input(data: bytes, size: int = 8) -> np.ndarray:
    """Any digit picture → ``(1, size, size)`` float32 in [0, 1], light ink on dark like scikit-learn's digits.

    Converted to grayscale; dark-on-light pictures (a border brighter than the average) are inverted; an image
    of another size is cropped to its ink, padded to a centred square and area-averaged to ``size × size``.
    """
    return digit_array(np.asarray(decode(data).convert("L"), dtype=np.float32) / 255.0, size)


def digit_array(gray: np.ndarray, size: int = 8) -> np.ndarray:
    """``digit_input`` for a grayscale ``(H, W)`` array in [0, 1] (the Open Inference Protocol's FP32 input)."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > gray.mean():  # light background: ink is dark
        gray = 1.0 - gray
    gray = gray - gray.min()
    if gray.max() > 0:
        gray = gray / gray.max()
    if gray.shape != (size, size):  # crop to the ink, pad to a centred square, average down (like the UCI digits)
        rows, cols = np.flatnonzero(gray.max(1) > 0.25), np.flatnonzero(gray.max(0) > 0.25)
        if len(rows) and len(cols):
            gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            h, w = gray.shape
            side = max(h, w)
            square = np.zeros((side, side), dtype=np.float32)
            square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = gray
            gray = square
    quantized = (gray * 255).astype(np.uint8)  # as an 8-bit picture, like every other input
    if quantized.shape == (size, size):  # PIL's resize to the same size is a copy: skip it (the OIP's FP32 fast path)
        return (quantized.astype(np.float32) / 255.0)[None]
    resized = Image.fromarray(quantized).resize((size, size), Image.BOX)
    return (np.asarray(resized, dtype=np.float32) / 255.0)[None]


def scene_input(data: bytes, size: int = 32) -> np.ndarray:
    """A captioning scene → ``(1, size, size)`` float32 in [0, 1] (grayscale, resized if needed)."""
    image = decode(data).convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0)[None]


# PIL's filters by the numbers Hugging Face image processors store as ``resample``
RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC, 4: Image.BOX, 5: Image.HAMMING}


def picture_input(data: bytes, size: tuple[int, int], color: str = "RGB", resample: int | None = 2) -> np.ndarray:
    """Any picture → ``(C, H, W)`` float32 pixel values / 255, for a model that states its processing (an imported
    checkpoint): converted to ``color`` ("RGB" or "L") and resized to ``size`` (height, width) with its filter, as its
    own image processor does; the graph normalises."""
    image = decode(data).convert(color)
    return _picture(image, size, resample)


def picture_array(pixels: np.ndarray, size: tuple[int, int], resample: int | None = 2) -> np.ndarray:
    """``picture_input`` for a ``(C, H, W)`` array in [0, 1] (the Open Inference Protocol's FP32 input)."""
    quantized = np.rint(np.moveaxis(pixels, 0, -1) * 255).astype(np.uint8)
    image = Image.fromarray(quantized[..., 0] if quantized.shape[-1] == 1 else quantized)
    return _picture(image, size, resample)


def _picture(image: Image.Image, size: tuple[int, int], resample: int | None) -> np.ndarray:
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE.get(2 if resample is None else resample, Image.BILINEAR))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 ``(H, W)`` → PNG bytes (for clients and tests)."""
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
