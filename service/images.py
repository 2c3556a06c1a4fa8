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


# What one 8-bit step is in the modes Pillow gives deeper pictures: a 16-bit grayscale PNG opens as "I;16" (Pillow
# 13) or "I" (older Pillow), 0..65535 either way, and 65535 / 257 = 255. Pillow's own convert("L") clips these at 255
# instead of scaling them. "F" (which none of PNG/JPEG/BMP opens as) is left to it: read as 0..255, clipped.
STEP = {"I;16": 257, "I;16B": 257, "I;16L": 257, "I;16N": 257, "I": 257}


def visible(data: bytes, background: tuple[int, int, int] | None = None) -> Image.Image:
    """``decode`` and make the picture what a viewer sees, as 8-bit pixels without alpha, ready for ``convert``.

    Deeper grayscale is scaled to 8 bits (the same picture as a 16-bit PNG is the same input). Transparency (an alpha
    band, or a PNG's transparent colour) is composited onto ``background``, by default the one that contrasts with
    the opaque pixels: white under dark ones (black strokes on an HTML canvas's transparent black would otherwise
    vanish), black under light ones. A fully opaque picture is left as it is.
    """
    image = _eight_bit(decode(data))
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64)
    if alpha.min() == 255:
        return image
    if background is None:  # alpha-weighted mean of the opaque pixels' gray; nothing opaque: black, a blank input
        dark = (np.asarray(rgba.convert("L"), dtype=np.float64) * alpha).sum() < 127.5 * alpha.sum()
        background = (255, 255, 255) if dark else (0, 0, 0)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")


def _eight_bit(image: Image.Image) -> Image.Image:
    """A deeper grayscale picture as "L" scaled by ``STEP`` (rounded, clipped to 0..255), or "LA" when it has a
    transparent value (compared before scaling, where it is exact); any other mode as it is."""
    step = STEP.get(image.mode)
    if step is None:
        return image
    deep = np.asarray(image, dtype=np.float64)
    gray = Image.fromarray(np.clip(np.rint(deep / step), 0, 255).astype(np.uint8))
    transparent = image.info.get("transparency")
    if transparent is None:
        return gray
    return Image.merge("LA", (gray, Image.fromarray(np.where(deep == transparent, 0, 255).astype(np.uint8))))


def digit_input(data: bytes, size: int = 8) -> np.ndarray:
    """Any digit picture → ``(1, size, size)`` float32 in [0, 1], light ink on dark like scikit-learn's digits.

    Converted to grayscale (16-bit scaled to 8, transparency composited onto a contrasting background: see
    ``visible``); dark-on-light pictures (a border brighter than the average) are inverted; an image of another size
    is cropped to its ink, padded to a centred square and area-averaged to ``size × size``.
    """
    return digit_array(np.asarray(visible(data).convert("L"), dtype=np.float32) / 255.0, size)


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
    """A captioning scene → ``(1, size, size)`` float32 in [0, 1] (grayscale as ``visible`` reads it, resized if
    needed)."""
    image = visible(data).convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0)[None]


# PIL's filters by the numbers Hugging Face image processors store as ``resample``
RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC, 4: Image.BOX, 5: Image.HAMMING}


def picture_input(data: bytes, size: tuple[int, int], color: str = "RGB", resample: int | None = 2) -> np.ndarray:
    """Any picture → ``(C, H, W)`` float32 pixel values / 255, for a model that states its processing (an imported
    checkpoint): converted to ``color`` ("RGB" or "L") and resized to ``size`` (height, width) with its filter, as its
    own image processor does; the graph normalises. Transparency goes onto white, as transformers' ``convert_to_rgb``
    composites it, rather than whatever colour the transparent pixels happen to hold."""
    image = visible(data, background=(255, 255, 255)).convert(color)
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
