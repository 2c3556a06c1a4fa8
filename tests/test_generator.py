"""The translator and captioner hosts (service/generator.py) on the real models, without Ray: jobs in, answers out,
and the engine's refusals as ServiceErrors (503 at submit, 504 past a deadline) on plain and streamed requests."""

import asyncio

import numpy as np
import pytest

from service import errors
from service.contract import Contract, Deadline
from service.generator import CaptionerHost, TranslatorHost
from service.runtime import RuntimeOptions


@pytest.fixture(scope="module")
def contract(repo):
    return Contract.from_repository(repo)


@pytest.fixture(scope="module")
def translator(repo):
    host = TranslatorHost(repo / "translator" / "1", RuntimeOptions(intra_op_threads=1))
    yield host
    host.stop()


def collect(stream) -> list:
    async def run():
        return [item async for item in stream]

    return asyncio.run(run())


def test_translate_and_stream_agree(translator, contract):
    job = contract.translate(["Friday, March 14, 2025", "Germany"], beam_size=2)
    result = asyncio.run(translator.translate(job))
    assert result["translations"][0] == "vendredi 14 mars 2025" and result["tokens"][0] == 12
    items = collect(translator.stream(contract.translate(["Friday, March 14, 2025"], stream=True)))
    assert items[-1] == {"done": True, "translation": "vendredi 14 mars 2025", "tokens": 12}
    assert "".join(i.get("token", "") for i in items[:-1]) == items[-1]["translation"]


def test_a_full_queue_is_503_at_submit_on_plain_and_streamed_requests(translator, contract):
    translator.reconfigure({"max_queue": 0, "auto_width": False})
    try:
        with pytest.raises(errors.ServiceError) as e:
            asyncio.run(translator.translate(contract.translate(["Hello"])))
        assert e.value.kind is errors.Kind.OVERLOADED and e.value.message.startswith("translator:")
        with pytest.raises(errors.ServiceError) as e:
            collect(translator.stream(contract.translate(["Hello"], stream=True)))
        assert e.value.kind is errors.Kind.OVERLOADED
    finally:
        translator.reconfigure({"auto_width": False})
    assert translator.stats()["max_queue"] == 1024


def test_decode_nice_is_a_live_setting_and_a_bad_one_is_refused(translator, contract):
    try:
        translator.reconfigure({"auto_width": False, "decode_nice": 6})
        asyncio.run(translator.translate(contract.translate(["Hello"])))  # a step runs with the new options
        stats = translator.stats()
        assert stats["decode_nice"] == 6 and stats["nice"] >= 6
        with pytest.raises(ValueError, match="decode_nice"):
            translator.reconfigure({"auto_width": False, "decode_nice": 25})
    finally:
        translator.reconfigure({"auto_width": False})
    assert translator.stats()["decode_nice"] == 4


def test_a_passed_deadline_is_504(translator, contract):
    job = contract.translate(["nine hundred ninety-nine thousand " * 8], max_new_tokens=256, deadline=Deadline(0.005))
    with pytest.raises(errors.ServiceError) as e:
        asyncio.run(translator.translate(job))
    assert e.value.kind is errors.Kind.DEADLINE


def test_captions_are_clamped_to_the_decoders_positions(repo, contract):
    host = CaptionerHost(repo / "captioner" / "1", RuntimeOptions(intra_op_threads=1))
    try:
        noise = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
        from service.images import encode_png

        job = contract.caption([encode_png(noise)], max_new_tokens=256)
        result = asyncio.run(host.caption(job))
        assert result["tokens"][0] <= 48 and host.stats()["max_new_tokens_limit"] == 48
    finally:
        host.stop()
