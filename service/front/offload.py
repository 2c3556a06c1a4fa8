"""Decoding a request's images off the event loop when they are large.

A replica's event loop parses every request of every protocol, and its decode loops wait on it for their results.
Decoding a picture costs about its pixel count: a digit in a few microseconds, a 4096 × 4096 PNG ~250 ms, and a request
may carry 64 of them, all within the limits. Decoded on the loop, such a request held every other client of the
replica (and its health checks) for 10-20 s. So a request whose images add up to more than ``HEAVY_PIXELS`` (read
from their headers, which costs microseconds) or ``HEAVY_BYTES`` is decoded in a worker thread, where Pillow
releases the GIL while it decodes and resizes; the small ones, nearly all of them, stay on the loop, where a thread
hand-off would cost more than the decoding.
"""

from __future__ import annotations

import asyncio
import io

from PIL import Image

HEAVY_PIXELS = 1 << 20  # a request's pixels in all (a 1024 × 1024 picture) past which it is decoded off the loop
HEAVY_BYTES = 1 << 20  # its encoded bytes in all, past which it is too, headers unread


def pixels(data) -> int:
    """The pixel count an encoded picture's header announces (0 for what is not a readable picture: the contract
    refuses it, on the loop, at once). PNG and BMP carry it at fixed offsets and JPEG in its frame header, read here
    directly: Pillow's ``open`` costs ~25 µs a picture, a quarter of a millisecond for a request of ten digits."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return 0
    data = bytes(data[:65536]) if isinstance(data, memoryview) else data
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if data[:2] == b"BM" and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True) * int.from_bytes(data[22:26], "little", signed=True))
    if data[:2] == b"\xff\xd8":
        return _jpeg_pixels(data)
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except Exception:  # anything Pillow raises on bytes that are not a picture
        return 0
    return width * height


def _jpeg_pixels(data: bytes) -> int:
    """Width × height from a JPEG's first frame header (SOF0..SOF15 but DHT, JPG and DAC), walking the segments."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return 0
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 5:i + 7], "big") * int.from_bytes(data[i + 7:i + 9], "big")
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return 0


def heavy(payloads) -> bool:
    """Whether decoding ``payloads`` (encoded pictures) would hold the event loop long enough to matter."""
    try:
        items = list(payloads)
    except TypeError:
        return False
    if sum(len(p) for p in items if isinstance(p, (bytes, bytearray, memoryview))) > HEAVY_BYTES:
        return True
    total = 0
    for data in items:
        total += pixels(data)
        if total > HEAVY_PIXELS:
            return True
    return False


async def built(build, payloads, *args, **kwargs):
    """``build(payloads, *args, **kwargs)`` (the contract's ``classify`` or ``caption``): on the event loop, or, for
    heavy pictures, in a worker thread while the loop goes on serving."""
    if heavy(payloads):
        return await asyncio.to_thread(build, payloads, *args, **kwargs)
    return build(payloads, *args, **kwargs)
