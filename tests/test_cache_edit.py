"""Cache edits between steps (service/cache_edit.py): in place on the CPU and by the device graph give the same cache,
and the engine decodes the same tokens through either."""

import numpy as np
import onnxruntime as ort
import pytest

from service.cache_edit import CacheEditor, edit_in_place, rows_of
from service.decoding import DecodingOptions
from service.engine import DecodeEngine, EngineOptions, Sequence
from service.runtime import EncoderDecoderRuntime

CASES = {
    "beam reorder with duplicates": (np.array([1, 1, 0, 3]), 0),
    "rows dropped (compaction)": (np.array([3, 0]), 0),
    "rows added (newcomers continue from row 0)": (np.array([0, 1, 2, 3, 0, 0]), 0),
    "dead columns dropped": (None, 2),
    "both": (np.array([2, 2, 1]), 3),
}


@pytest.mark.parametrize("case", CASES)
def test_the_device_graph_and_the_in_place_edit_agree(case):
    rows, offset = CASES[case]
    rng = np.random.default_rng(0)
    fresh = lambda: [rng.standard_normal((4, 2, 5, 3), dtype=np.float32) for _ in range(2)]
    cache = fresh()
    want = [a[rows if rows is not None else slice(None)][:, :, offset:] for a in cache]
    graph = CacheEditor(2, np.float32, ["CPUExecutionProvider"], "cpu", in_place=False)
    got_graph = graph([ort.OrtValue.ortvalue_from_numpy(a.copy()) for a in cache], rows, offset)
    assert all(isinstance(v, ort.OrtValue) for v in got_graph)  # stays where the decoder runs
    got_in_place = edit_in_place([a.copy() for a in cache], rows, offset)
    for w, g, p in zip(want, got_graph, got_in_place):
        np.testing.assert_array_equal(g.numpy(), w)
        np.testing.assert_array_equal(p, w)
    assert rows_of(got_graph[0]) == len(want[0])


def test_in_place_copies_only_the_rows_that_move():
    cache = [np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 1, 2, 1), np.float32)]
    out = edit_in_place(cache, np.array([0, 0, 2, 3]), 0)
    assert out[0] is cache[0] and out[0][:, 0, 0, 0].tolist() == [0, 0, 2, 3]  # the same memory, edited


def test_the_engine_decodes_the_same_tokens_on_the_device_path(repo):
    """What a GPU runs (IOBinding, the cache as OrtValues edited by the device graph), here on the CPU provider."""
    from models.data.tokenizer import Tokenizer

    directory = repo / "translator" / "1"
    tok = Tokenizer.load(directory)
    texts = ["Friday, March 14, 2025", "nine hundred and ninety-nine", "The meeting is on Wednesday, September 27, 2084.",
             "one", "Thursday, April 12, 1973", "She was born on March 3, 1987."]
    sources = [np.array(tok.encode(t) + [3], dtype=np.int64) for t in texts]
    rt = EncoderDecoderRuntime(directory)
    rt.edit_cache = CacheEditor(2 * rt.layers, rt.float_type, rt.decoder.get_providers(), rt.device, in_place=False)
    rt.io_binding = True
    engine = DecodeEngine(rt, EngineOptions(max_batch=6, auto_width=False))  # fewer rows than asked: rows come and go
    seqs = engine.submit_all([Sequence(s, 60, beam_size=b) for s in sources for b in (1, 3)])
    while engine.load != (0, 0):
        engine.step()
    reference = EncoderDecoderRuntime(directory)  # in place, offline
    for i, s in enumerate(sources):
        for j, beam in enumerate((1, 3)):
            want = reference.generate(s[None], None, DecodingOptions(beam_size=beam, max_new_tokens=60))[0]
            assert seqs[2 * i + j].future.result() == want


def device_path(directory):
    rt = EncoderDecoderRuntime(directory)
    rt.edit_cache = CacheEditor(2 * rt.layers, rt.float_type, rt.decoder.get_providers(), rt.device, in_place=False)
    rt.io_binding = True
    return rt


def waves(rt, sources, max_new, size=48):
    """The engine over ``sources`` in waves larger than its batch, so rows join and leave mid-flight."""
    engine = DecodeEngine(rt, EngineOptions(max_batch=32, auto_width=False, max_queue=10**6, max_queue_wait_s=3600))
    got = []
    for i in range(0, len(sources), size):
        seqs = engine.submit_all([Sequence(s, max_new) for s in sources[i : i + size]])
        while engine.load != (0, 0):
            engine.step()
        got += [s.future.result() for s in seqs]
    return got


def test_the_device_path_gives_the_offline_tokens_on_every_test_sentence_and_scene(repo):
    """IOBinding and the device cache edits, on the CPU provider, against the offline search (which the export checks
    token-identical to PyTorch greedy on these splits): the whole translator test split and all 1,000 test scenes."""
    from models.data import digits as D
    from models.data import text as T
    from models.data.tokenizer import Tokenizer

    directory = repo / "translator" / "1"
    tok, reference = Tokenizer.load(directory), EncoderDecoderRuntime(directory)
    sources = [np.array(tok.encode(s) + [3], dtype=np.int64) for s, _ in T.build_corpus()["test"]]
    got = waves(device_path(directory), sources, 100)
    want = []
    for i in range(0, len(sources), 100):
        chunk = sources[i : i + 100]
        src = np.zeros((len(chunk), max(map(len, chunk))), dtype=np.int64)
        for j, s in enumerate(chunk):
            src[j, : len(s)] = s
        want += reference.generate(src, src != 0, DecodingOptions(max_new_tokens=100))
    assert sum(g == w for g, w in zip(got, want)) == len(sources) == 2000

    directory = repo / "captioner" / "1"
    canvases, _, _ = D.make_scenes(D.digit_splits()["test"], 1000, seed=2)
    images = canvases[:, None].astype(np.float32) / 255.0
    got = waves(device_path(directory), list(images), 48)
    reference = EncoderDecoderRuntime(directory)
    want = [t for i in range(0, 1000, 100) for t in reference.generate(images[i : i + 100], None, DecodingOptions(max_new_tokens=48))]
    assert sum(g == w for g, w in zip(got, want)) == 1000


@pytest.mark.parametrize("name", ["opus", "scenes"])
def test_an_imported_decoder_gives_the_same_tokens_on_the_device_path(repo, name):
    """The tests' imported Marian translator and ViT + GPT-2 captioner (conftest.py; their host-path tokens are held to
    transformers' generate in test_front.py and test_hf_caption.py): greedy and beam-4 rows mixed in one batch give
    the same tokens through IOBinding and the device cache edits."""
    directory = repo / name / "1"
    rng = np.random.default_rng(4)
    if name == "opus":
        sources = [rng.integers(2, 120, rng.integers(3, 12)).astype(np.int64) for _ in range(24)]
    else:
        sources = list(rng.random((24, 3, 32, 32), dtype=np.float32))
    options = EngineOptions(max_batch=16, auto_width=False, max_queue=10**6, max_queue_wait_s=3600,
                            stop_on_repetition=False, beam_rule="transformers")

    def decode(rt):
        engine = DecodeEngine(rt, options)
        seqs = engine.submit_all([Sequence(s, 30, beam_size=4 if i % 3 == 0 else 1) for i, s in enumerate(sources)])
        while engine.load != (0, 0):
            engine.step()
        return [s.future.result() for s in seqs]

    host = decode(EncoderDecoderRuntime(directory))
    assert decode(device_path(directory)) == host and len({tuple(t) for t in host}) > 1
