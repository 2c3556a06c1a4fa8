"""grpc.health.v1.Health and server reflection, from plain grpcio clients."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc


@pytest.fixture(scope="module")
def channel(service):
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as ch:
        yield ch


@pytest.mark.parametrize("name", ["", "inference.v1.Inference", "inference.GRPCInferenceService", "translator", "classifier", "captioner"])
def test_health_check_serving(channel, name):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="resnet50"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_the_current_status(channel):
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="translator"), timeout=30)
    assert next(call).status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()


def test_reflection_lists_every_service(channel):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"inference.v1.Inference", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services, services


def test_reflection_describes_the_task_service(channel):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))  # what grpcurl's `describe` does
    service = pool.FindServiceByName("inference.v1.Inference")
    assert {m.name for m in service.methods} == {"Translate", "TranslateStream", "Classify", "Caption"}
    assert pool.FindMessageTypeByName("inference.v1.TranslateRequest").fields_by_name["texts"].number == 1
