"""The no-op model (service/echo.py) in-process: the input tensor comes back; anything else is the protocol's 4xx.
(frontend_bench.py measures it served.)"""

from starlette.testclient import TestClient

from service.echo import app


def test_the_tensor_comes_back_and_bad_requests_are_refused():
    client = TestClient(app)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.5, -3.0]}]}
    r = client.post("/v2/models/echo/infer", json=body)
    assert r.status_code == 200 and r.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.5, -3.0]}]
    assert client.post("/v2/models/other/infer", json=body).status_code == 404
    text = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    r = client.post("/v2/models/echo/infer", json=text)
    assert r.status_code == 400 and "numeric" in r.json()["error"]
