"""Which requests' pictures are decoded off the event loop (``service/front/offload.py``), and that the loop goes on
serving while they are: in process, with the contract's real decoding, no service."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from service.contract import Contract
from service.front.offload import HEAVY_BYTES, built, heavy, pixels
from service.images import encode_png
from tests.test_contract import CONFIGS


def png(height: int, width: int) -> bytes:
    return encode_png(np.zeros((height, width), np.uint8))


def test_small_pictures_stay_on_the_loop_and_large_ones_leave_it():
    digit = png(8, 8)
    assert pixels(digit) == 64 and not heavy([digit] * 64)
    assert not heavy([png(1000, 1000)])  # up to a megapixel in all
    assert heavy([png(1024, 1025)]) and heavy([png(600, 600)] * 3)  # past it, in one picture or in several
    assert heavy([b"\0" * (HEAVY_BYTES + 1)])  # many bytes: off the loop, headers unread
    assert pixels(b"not a picture") == 0 and not heavy([b"not a picture", "a string", None])
    assert not heavy(5)  # not a list of pictures: the contract refuses it, at once


def test_headers_are_read_as_pillow_reads_them():
    import io

    from PIL import Image

    for fmt, options in [("PNG", {}), ("BMP", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("GIF", {})]:
        for mode in ("L", "RGB"):
            for width, height in [(8, 8), (700, 300), (13, 4096)]:
                buffer = io.BytesIO()
                Image.new(mode, (width, height)).save(buffer, fmt, **options)
                assert pixels(buffer.getvalue()) == width * height, (fmt, options, mode, width, height)
    assert pixels(b"\xff\xd8\xff") == pixels(b"\x89PNG\r\n\x1a\n") == pixels(b"BM") == 0  # cut short: no size


def test_a_request_of_large_pictures_does_not_hold_the_loop():
    """Four 4096 x 4096 pictures (~1 s of decoding here) decode while a ticker on the loop keeps its 10 ms beat."""
    contract = Contract(CONFIGS)
    pictures = [png(4096, 4096)] * 4
    threads, lags = [], []

    def classify(payloads, **kwargs):
        threads.append(threading.get_ident())
        return contract.classify(payloads, **kwargs)

    async def ticker(stop: asyncio.Event):
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    async def main():
        stop = asyncio.Event()
        ticking = asyncio.create_task(ticker(stop))
        started = time.monotonic()
        job = await built(classify, pictures, top_k=3)
        took = time.monotonic() - started
        stop.set()
        await ticking
        small = await built(classify, [png(8, 8)])
        return job, took, small

    job, took, small = asyncio.run(main())
    assert job.images.shape == (4, 1, 8, 8) and job.top_k == 3 and small.images.shape == (1, 1, 8, 8)
    assert threads[0] != threading.main_thread().ident and threads[1] == threading.main_thread().ident
    assert len(lags) >= 5, (took, lags)  # the loop ticked all along (inline, it would tick once, after the decoding)
    assert max(lags) < min(0.25, took / 2), (took, max(lags))
