"""The request contract (service.contract), in-process: no Ray, no ONNX Runtime. Every limit a client can hit, and
the kind of refusal it gets (tests/test_front.py: the same on every protocol)."""

import base64

import numpy as np
import pytest

from service import contract
from service.contract import Contract, Deadline
from service.errors import Kind, ServiceError
from service.images import MAX_IMAGE_BYTES, encode_png

CONFIGS = {  # what the contract reads of each model's config.json (the shipped models' values)
    "translator": {"decoder": {"max_len": 256}, "encoder": {"max_source_tokens": 256}},
    "classifier": {"model_config": {"image_size": 8}, "labels": [str(i) for i in range(10)]},
    "captioner": {"decoder": {"max_len": 48}, "encoder": {"image_size": 32}},
}


@pytest.fixture(scope="module")
def c() -> Contract:
    return Contract(CONFIGS)


def refused(kind: Kind, call, *args, **kwargs) -> ServiceError:
    with pytest.raises(ServiceError) as e:
        call(*args, **kwargs)
    assert e.value.kind is kind, e.value
    return e.value


def png(side: int = 8) -> bytes:
    return encode_png((np.arange(side * side).reshape(side, side) % 256).astype(np.uint8))


def test_defaults_and_the_decoders_positions(c):
    job = c.translate(["Hello"])
    assert job.options.beam_size == 1 and job.options.max_new_tokens == 128 and not job.return_attention
    assert c.caption([png(32)]).options.max_new_tokens == 40
    # within the API's range but past the decoder's positions: clamped (the sequence finishes with "length")
    assert c.caption([png(32)], max_new_tokens=256).options.max_new_tokens == 48
    assert c.translate(["Hello"], max_new_tokens=256).options.max_new_tokens == 256


@pytest.mark.parametrize("field,value", [("beam_size", 0), ("beam_size", 9), ("beam_size", True), ("beam_size", "2"),
                                         ("beam_size", 2.0), ("max_new_tokens", 0), ("max_new_tokens", 257)])
def test_ranges_are_422_naming_the_field(c, field, value):
    for call in (lambda: c.translate(["Hi"], **{field: value}), lambda: c.caption([png(32)], **{field: value})):
        e = refused(Kind.OUT_OF_RANGE, call)
        assert field in e.message and e.status == 422 and e.kind.grpc_name == "INVALID_ARGUMENT"


def test_top_k_range(c):
    assert c.classify([png()], top_k=10).top_k == 10
    for bad in (0, 11, -1, "3"):
        refused(Kind.OUT_OF_RANGE, c.classify, [png()], top_k=bad)


def test_item_counts(c):
    refused(Kind.OUT_OF_RANGE, c.translate, [])
    e = refused(Kind.TOO_LARGE, c.translate, ["a"] * (contract.MAX_ITEMS + 1))
    assert e.status == 413 and str(contract.MAX_ITEMS) in e.message
    refused(Kind.TOO_LARGE, c.classify, [png()] * (contract.MAX_ITEMS + 1))
    assert len(c.classify([png()] * contract.MAX_ITEMS).images) == contract.MAX_ITEMS
    refused(Kind.OUT_OF_RANGE, contract.one_or_many, "a", ["b"], "text")
    refused(Kind.OUT_OF_RANGE, contract.one_or_many, None, None, "text")


def test_texts(c):
    e = refused(Kind.TOO_LARGE, c.translate, ["ok", "x" * (contract.MAX_TEXT_CHARS + 1)])
    assert "texts[1]" in e.message and e.code == "text_too_long"
    assert c.translate(["x" * contract.MAX_TEXT_CHARS]).texts
    assert refused(Kind.INVALID, c.translate, ["  "]).code == "empty_text"
    refused(Kind.OUT_OF_RANGE, c.translate, [3])


def test_streams_are_one_greedy_text_without_attention(c):
    assert c.translate(["Hi"], stream=True, field="text").options.beam_size == 1
    assert "beam_size" in refused(Kind.OUT_OF_RANGE, c.translate, ["Hi"], beam_size=2, stream=True).message
    assert "exactly one" in refused(Kind.OUT_OF_RANGE, c.translate, ["a", "b"], stream=True).message
    refused(Kind.OUT_OF_RANGE, c.translate, ["Hi"], return_attention=True, stream=True)


def test_images_become_one_array_of_the_models_size(c):
    job = c.classify([png(8), png(40), png(3)])
    assert job.images.shape == (3, 1, 8, 8) and job.images.dtype == np.float32
    assert 0 <= job.images.min() and job.images.max() <= 1
    assert c.caption([png(32)]).images.shape == (1, 1, 32, 32)


def test_bad_images_are_400_and_large_ones_413(c):
    e = refused(Kind.INVALID, c.classify, [png(), b"not an image"])
    assert "images[1]" in e.message and e.code == "invalid_image"
    refused(Kind.INVALID, c.classify, [b""])
    refused(Kind.TOO_LARGE, c.classify, [b"\x89PNG" + b"0" * MAX_IMAGE_BYTES])
    refused(Kind.TOO_LARGE, c.caption, [encode_png(np.zeros((1, 5000), np.uint8))])
    assert contract.b64(base64.b64encode(b"abc").decode(), "image") == b"abc"
    assert refused(Kind.INVALID, contract.b64, "***", "image").code == "invalid_base64"


def test_classify_arrays(c):
    assert c.classify_array(np.full((2, 1, 8, 8), 0.5, np.float32)).images.shape == (2, 1, 8, 8)
    assert c.classify_array(np.random.rand(1, 1, 20, 30).astype(np.float32)).images.shape == (1, 1, 8, 8)
    refused(Kind.INVALID, c.classify_array, np.zeros((2, 8, 8), np.float32))
    refused(Kind.INVALID, c.classify_array, np.full((1, 1, 8, 8), 2.0, np.float32))
    refused(Kind.INVALID, c.classify_array, np.full((1, 1, 8, 8), np.nan, np.float32))
    refused(Kind.TOO_LARGE, c.classify_array, np.zeros((1, 1, 1, 5000), np.float32))
    refused(Kind.TOO_LARGE, c.classify_array, np.zeros((65, 1, 8, 8), np.float32))


def test_unknown_models_are_404(c):
    assert refused(Kind.NOT_FOUND, c.model, "nope").status == 404


def test_deadlines():
    assert Deadline.from_header(None) is None
    d = Deadline(0.25, now=100.0)
    assert d.left_s(now=100.05) == pytest.approx(0.2)
    assert 0 < Deadline.from_header("250").left_s() <= 0.25
    for bad in ("abc", "0", "-5", "inf", "nan"):
        assert refused(Kind.INVALID, Deadline.from_header, bad).code == "invalid_header"


def test_limits_are_published_per_model(c):
    limits = c.limits()
    assert limits["captioner"]["max_new_tokens_decoded"] == 48 and limits["translator"]["max_text_chars"] == 512
    assert limits["classifier"]["top_k"] == [1, 10] and all(v["max_items"] == contract.MAX_ITEMS for v in limits.values())


PETS = {"task": "classification", "labels": ["cat", "dog", "fox"], "model_config": {"image_size": 32},
        "processing": {"size": [32, 32], "channels": 3, "color": "RGB", "resample": 2}}


def test_a_request_names_a_model_of_its_task_or_gets_the_shipped_one():
    c = Contract(CONFIGS | {"pets": PETS})
    assert c.classify([png()]).model == "classifier" and c.classify([png()]).images.shape == (1, 1, 8, 8)
    job = c.classify([png(50)], model="pets")  # the imported model's own processing: RGB, resized to its 32 × 32
    assert job.model == "pets" and job.images.shape == (1, 3, 32, 32) and job.images.dtype == np.float32
    assert 0.0 <= job.images.min() and job.images.max() <= 1.0
    assert refused(Kind.NOT_FOUND, c.classify, [png()], model="parrots").message.startswith("unknown model 'parrots'")
    wrong = refused(Kind.OUT_OF_RANGE, c.classify, [png()], model="translator")
    assert wrong.message == "model 'translator' does translation, not classification; classification models: classifier, pets"
    refused(Kind.OUT_OF_RANGE, c.classify, [png()], model=7)
    assert c.names("classification") == ["classifier", "pets"]
    assert c.limits()["pets"] == {"max_items": contract.MAX_ITEMS, "top_k": [1, 10]}


def test_an_imported_models_arrays_take_its_channels_and_any_size():
    c = Contract(CONFIGS | {"pets": PETS})
    job = c.classify_array(np.random.default_rng(0).random((2, 3, 40, 20), dtype=np.float32), model="pets")
    assert job.images.shape == (2, 3, 32, 32) and job.model == "pets"
    same = np.random.default_rng(1).integers(0, 256, (1, 3, 32, 32)).astype(np.float32) / 255  # its size: unchanged
    assert np.allclose(c.classify_array(same, model="pets").images, same, atol=1e-6)
    refused(Kind.INVALID, c.classify_array, np.zeros((1, 1, 32, 32), np.float32), model="pets")  # 1 channel, 3 needed
    assert c.classify_array(np.zeros((1, 1, 8, 8), np.float32)).model == "classifier"


def test_a_repository_lists_its_own_models_and_names_the_ones_it_cannot_serve(tmp_path):
    import json

    for name, config in (CONFIGS | {"pets": PETS, "zebras": PETS | {"labels": ["z"]}}).items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "config.json").write_text(json.dumps(config))
    (tmp_path / "notes").mkdir()  # no 1/config.json: not a model
    assert list(contract.repository_configs(tmp_path)) == ["translator", "classifier", "captioner", "pets", "zebras"]
    (tmp_path / "bart" / "1").mkdir(parents=True)
    (tmp_path / "bart" / "1" / "config.json").write_text(json.dumps({"task": "summarization"}))
    served, skipped = contract.repository_models(tmp_path)  # served beside what is not, with the reason
    assert list(served) == ["translator", "classifier", "captioner", "pets", "zebras"]
    assert skipped == {"bart": "task 'summarization' is not served for a model of the repository's own yet "
                               "(served: classification, translation, captioning, and the shipped three)"}
