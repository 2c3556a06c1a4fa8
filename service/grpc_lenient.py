"""gRPC servicer registration that lets a malformed request message reach the servicer instead of failing in gRPC,
and hands the servicer the call's deadline.

With the generated ``add_*_to_server`` functions, bytes that do not parse as the request message (truncated,
invalid UTF-8 in a string field, garbage) fail inside gRPC's deserializer, before any of the service's code runs, and
the client sees ``UNKNOWN`` or ``INTERNAL``: a server fault, for something the client sent. Registered through
these wrappers (``grpc_servicer_functions`` in ``deploy/serve_config.yaml``), such a message arrives as an
``Undecodable`` and the ingress answers ``INVALID_ARGUMENT`` with the parser's reason.

The deadline: Serve hands a servicer method a copy of the call's context that keeps its metadata but not its deadline
(``RayServegRPCContext``), and gRPC does not pass ``grpc-timeout`` on as metadata. So the handlers Serve builds for
the service's unary calls are wrapped, where they still see gRPC's own context: the message reaches the servicer as
an ``Arrived`` that carries what the deadline left when the call arrived.
"""

from __future__ import annotations

import asyncio
import inspect
import time


class Undecodable:
    """Stands in for a request message that could not be parsed."""

    def __init__(self, error: str) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({self.error!r})"


class Arrived:
    """A unary call's request message (or ``Undecodable``) and its deadline: ``remaining_s`` seconds left when
    the call arrived, stamped at ``stamped`` (``time.time()``, so that it still means the same in another process);
    ``remaining_s`` is None for a call without a deadline."""

    __slots__ = ("message", "remaining_s", "stamped")

    def __init__(self, message, remaining_s: float | None, stamped: float | None = None) -> None:
        self.message, self.remaining_s = message, remaining_s
        self.stamped = time.time() if stamped is None else stamped

    def left_s(self, now: float | None = None) -> float | None:
        """Seconds the deadline leaves now (negative once past); None without a deadline."""
        if self.remaining_s is None:
            return None
        return self.remaining_s - ((time.time() if now is None else now) - self.stamped)

    def __reduce__(self):
        return Arrived, (self.message, self.remaining_s, self.stamped)


def _remaining(context) -> float | None:
    try:
        return context.time_remaining()
    except Exception:  # a context without one (a test's stand-in): no deadline
        return None


def _carrying(handler):
    """``handler`` (Serve's, for a unary request) handed an ``Arrived`` instead of the bare message."""
    if inspect.isasyncgenfunction(handler):
        async def carried_stream(request, context, *args, **kwargs):
            # Serve's handler is run in a task of its own that is always waiting for the replica's next message,
            # so that a client's cancel always reaches the replica. Iterated in place, it is cancelled only if
            # the cancel lands while it waits; one landing while gRPC sends a message closes the generators
            # instead, and Serve's gRPC proxy then never cancels the replica's call (it answers GeneratorExit
            # with a status: "async generator ignored GeneratorExit"), which decodes on for nobody.
            messages: asyncio.Queue = asyncio.Queue()  # unbounded: the pump never waits on anything but the replica

            async def pump():
                try:
                    async for item in handler(Arrived(request, _remaining(context)), context, *args, **kwargs):
                        messages.put_nowait((True, item))
                    messages.put_nowait((False, None))
                except BaseException as e:  # noqa: BLE001 (handed to the caller, cancellation included)
                    messages.put_nowait((False, e))

            task = asyncio.ensure_future(pump())
            try:
                while True:
                    more, item = await messages.get()
                    if not more:
                        if item is not None:
                            raise item
                        return
                    yield item
            finally:
                if not task.done():
                    task.cancel()

        return carried_stream

    async def carried(request, context, *args, **kwargs):
        return await handler(Arrived(request, _remaining(context)), context, *args, **kwargs)

    return carried


def _carry_deadlines(server) -> None:
    """Make ``server`` (Serve's ``gRPCGenericServer``) build its unary handlers through ``_carrying``. Another
    server (no ``service_handler_factory``: plain grpcio in a test) keeps its handlers, and its servicer sees the
    bare message."""
    factory = getattr(server, "service_handler_factory", None)
    if factory is None or getattr(factory, "carries_deadlines", False):
        return

    def carrying_factory(service_method, streaming_type):
        handler = factory(service_method=service_method, streaming_type=streaming_type)
        return _carrying(handler) if getattr(streaming_type, "name", "") in ("UNARY_UNARY", "UNARY_STREAM") else handler

    carrying_factory.carries_deadlines = True
    server.service_handler_factory = carrying_factory


def _lenient(parse):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as e:  # protobuf's DecodeError, or anything else a parser raises on bad bytes
            return Undecodable(f"{type(e).__name__}: {e}")

    return deserialize


class _LenientServer:
    """Forwards registrations to ``server`` with every handler's request deserializer made lenient."""

    def __init__(self, server) -> None:
        self.server = server
        _carry_deadlines(server)

    @staticmethod
    def _wrap(handlers: dict) -> dict:
        return {name: h._replace(request_deserializer=_lenient(h.request_deserializer)) if h.request_deserializer else h
                for name, h in handlers.items()}

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        import grpc

        wrapped = []
        for generic in generic_handlers:
            # generated code builds these with grpc.method_handlers_generic_handler(service, handlers)
            service, handlers = generic.service_name(), getattr(generic, "_method_handlers", None)
            if handlers is None:
                wrapped.append(generic)
                continue
            methods = {full.rsplit("/", 1)[-1]: h for full, h in handlers.items()}
            wrapped.append(grpc.method_handlers_generic_handler(service, self._wrap(methods)))
        self.server.add_generic_rpc_handlers(tuple(wrapped))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        if hasattr(self.server, "add_registered_method_handlers"):
            self.server.add_registered_method_handlers(service_name, self._wrap(method_handlers))

    def __getattr__(self, name):
        return getattr(self.server, name)


# The generated modules are imported when a server is built, not with this module: the ingress imports
# ``Undecodable`` from here, and loading proto/open_inference_pb2 into a process that also uses tritonclient (same
# protobuf package) would clash.


def add_InferenceServicer_to_server(servicer, server) -> None:  # noqa: N802 (gRPC's naming)
    from proto import inference_pb2_grpc

    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, _LenientServer(server))


def add_GRPCInferenceServiceServicer_to_server(servicer, server) -> None:  # noqa: N802
    from proto import open_inference_pb2_grpc

    open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, _LenientServer(server))


def add_HealthServicer_to_server(servicer, server) -> None:  # noqa: N802
    from grpc_health.v1 import health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(servicer, _LenientServer(server))
