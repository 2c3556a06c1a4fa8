"""The servicer registration (``service/grpc_lenient.py``) on Serve's own gRPC server class, in process: a call's
deadline reaches the servicer with its message, a message that does not parse arrives as ``Undecodable``, and
``service.front.grpc.opened`` turns both into what the handlers use. (The whole path through a deployed replica:
``tests/test_fuzz_grpc.py``, ``tests/test_reliability.py``.)"""

from __future__ import annotations

import asyncio
import pickle
import time

import grpc
import pytest
from grpc import aio

from service.grpc_lenient import Arrived, Undecodable, add_InferenceServicer_to_server


def serve_server(received: list):
    """Serve's ``gRPCGenericServer`` with a handler factory standing in for a replica's: it records what each call
    hands it and answers an empty message (a stream: two)."""
    from unittest import mock

    from ray.serve._private.grpc_util import gRPCGenericServer

    from proto import inference_pb2 as pb

    def factory(service_method, streaming_type):
        if streaming_type.name == "UNARY_STREAM":
            async def stream(request, context):
                received.append((service_method, request))
                for _ in range(2):
                    yield pb.TranslateChunk(token="x").SerializeToString()

            return stream

        async def unary(request, context):
            received.append((service_method, request))
            return pb.TranslateResponse().SerializeToString()

        return unary

    server = gRPCGenericServer(factory)
    add_InferenceServicer_to_server(mock.Mock(), server)  # Serve registers servicer functions with a stand-in too
    return server


def test_a_calls_deadline_and_message_reach_the_servicer():
    from proto import inference_pb2 as pb
    from proto import inference_pb2_grpc

    received: list = []

    async def main():
        server = serve_server(received)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = inference_pb2_grpc.InferenceStub(channel)
                await stub.Translate(pb.TranslateRequest(texts=["nine"]), timeout=3.0)
                await stub.Translate(pb.TranslateRequest(texts=["ten"]))
                chunks = [c async for c in stub.TranslateStream(pb.TranslateRequest(texts=["one"]), timeout=7.0)]
                assert len(chunks) == 2
                raw = channel.unary_unary("/inference.v1.Inference/Classify", request_serializer=None,
                                          response_deserializer=None)
                await raw(b"\xff" * 7, timeout=5.0)
        finally:
            await server.stop(0)

    asyncio.run(main())
    (m1, timed), (m2, untimed), (m3, streamed), (m4, garbage) = received
    assert m1.endswith("/Translate") and isinstance(timed, Arrived) and list(timed.message.texts) == ["nine"]
    # gRPC sends the timeout rounded up to its wire units, so what is left may exceed it by a little
    assert 2.0 < timed.left_s() <= 3.1
    assert isinstance(untimed, Arrived) and untimed.left_s() is None and list(untimed.message.texts) == ["ten"]
    assert m3.endswith("/TranslateStream") and 6.0 < streamed.left_s() <= 7.1
    assert isinstance(garbage, Arrived) and isinstance(garbage.message, Undecodable) and 4.0 < garbage.left_s() <= 5.1


def test_what_a_deadline_leaves_counts_down_and_survives_pickling():
    arrived = Arrived("message", 2.0, stamped=100.0)
    assert arrived.left_s(now=100.5) == pytest.approx(1.5)
    assert arrived.left_s(now=103.0) == pytest.approx(-1.0)
    copy = pickle.loads(pickle.dumps(arrived))  # Serve's proxy hands a request to a replica in another process
    assert (copy.message, copy.remaining_s, copy.stamped) == ("message", 2.0, 100.0)


class Context:
    def __init__(self):
        self.code, self.details = None, None

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def test_opened_unwraps_the_message_and_its_deadline_and_refuses_what_did_not_parse():
    from service.front.grpc import opened

    context = Context()
    message, deadline = opened(Arrived("message", 2.0), context)
    assert message == "message" and 1.5 < deadline.left_s() <= 2.0 and context.code is None
    assert opened(Arrived("message", None), context) == ("message", None)
    assert opened("bare", context) == ("bare", None)  # a server that does not wrap (plain grpcio)
    past = opened(Arrived("message", 1.0, stamped=time.time() - 5), context)[1]
    assert past.left_s() < -3.5  # admitted nowhere: the engine answers a passed deadline 504
    assert opened(Arrived(Undecodable("DecodeError: truncated"), 2.0), context) == (None, None)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in context.details


class Deadlined:
    def time_remaining(self):
        return 5.0


@pytest.mark.parametrize("how", ["closed while a message is being sent", "cancelled while waiting"])
def test_a_stream_the_client_leaves_cancels_the_replicas_call_whenever_the_cancel_lands(how):
    """Serve's stream handler cancels the replica's call only when a CancelledError reaches the await on the
    replica (its ProxyResponseGenerator); closing it at a ``yield`` (gRPC does, when the cancel lands while it
    sends a message) leaves the replica decoding for nobody. Wrapped, the handler always sees the cancel there."""
    from service.grpc_lenient import _carrying

    seen: list = []

    async def serve_handler(request, context):  # Serve's: each message awaited from the replica
        try:
            for i in range(100):
                await asyncio.sleep(0.01)  # the replica's next message
                yield i
        except asyncio.CancelledError:
            seen.append("replica's call cancelled")
            raise
        except GeneratorExit:
            seen.append("closed at a yield")
            raise

    async def main():
        stream = _carrying(serve_handler)("request", Deadlined())
        assert await stream.__anext__() == 0
        if how == "closed while a message is being sent":
            await stream.aclose()
        else:
            task = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        for _ in range(20):
            await asyncio.sleep(0.01)
        return seen

    assert asyncio.run(main()) == ["replica's call cancelled"]


def test_a_wrapped_stream_passes_every_message_and_the_handlers_error_on():
    from service.grpc_lenient import _carrying

    async def handler(request, context):
        assert isinstance(request, Arrived) and request.message == "request"
        yield 1
        yield 2
        raise ValueError("replica failed")

    async def main():
        got = []
        with pytest.raises(ValueError, match="replica failed"):
            async for item in _carrying(handler)("request", Deadlined()):
                got.append(item)
        return got

    assert asyncio.run(main()) == [1, 2]
