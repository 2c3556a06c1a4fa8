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
    refuses it, on the loop, at once)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return 0
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except Exception:  # anything Pillow raises on bytes that are not a picture
        return 0
    return width * height


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
