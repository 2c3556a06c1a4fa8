"""Iteration-level batching: admission between steps, immediate retirement, deadlines, cancellation."""

import random
import time

import numpy as np
import pytest

from models.data import digits as D
from models.data import text as T
from service.decoding import DecodingOptions
from service.engine import DecodeEngine, EngineOptions, QueueFull, Sequence, StepFailed
from service.metrics import DECODER_STEP_SAMPLE
from service.runtime import EncoderDecoderRuntime

EOS = 3


@pytest.fixture(scope="module")
def translator(repo):
    rt = EncoderDecoderRuntime(repo / "translator" / "1")
    from models.data.tokenizer import Tokenizer

    return rt, Tokenizer.load(repo / "translator" / "1")


def ids(tok, text):
    return np.array(tok.encode(text) + [EOS], dtype=np.int64)


def offline(rt, tok, texts):
    """The engine's reference: one padded batch through EncoderDecoderRuntime.generate (greedy)."""
    rows = [ids(tok, t) for t in texts]
    src = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, r in enumerate(rows):
        src[i, : len(r)] = r
    return rt.generate(src, src != 0, DecodingOptions(max_new_tokens=100))


def run_until_idle(engine, limit=500):
    for _ in range(limit):
        engine.step()
        if engine.load == (0, 0):
            return
    raise AssertionError("engine did not drain")


def test_staggered_arrivals_give_the_offline_outputs(translator):
    rt, tok = translator
    texts = [s for s, _ in random.Random(3).sample(T.build_corpus()["test"], 40)]
    engine = DecodeEngine(rt, EngineOptions(max_batch=8, auto_width=False))
    seqs = []
    for i, text in enumerate(texts):  # a new request every step, more than max_batch in flight
        seqs.append(engine.submit(Sequence(ids(tok, text), max_new_tokens=100)))
        engine.step()
    run_until_idle(engine)
    assert [s.future.result() for s in seqs] == offline(rt, tok, texts)
    assert {s.finish_reason for s in seqs} == {"eos"}
    assert max(s.admitted_at_step for s in seqs) > 8  # later ones joined a running batch


def test_short_request_overtakes_a_long_one(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(auto_width=False))
    long = engine.submit(Sequence(ids(tok, "The meeting is on Wednesday, September 27, 2084."), max_new_tokens=100))
    for _ in range(3):
        engine.step()
    short = engine.submit(Sequence(ids(tok, "nine"), max_new_tokens=100))
    run_until_idle(engine)
    assert short.finished_at_step < long.finished_at_step
    assert short.admitted_at_step == 3 and long.admitted_at_step == 0
    assert tok.decode(short.future.result()) == "neuf"
    assert tok.decode(long.future.result()) == "La réunion a lieu le mercredi 27 septembre 2084."


def test_short_finishes_first_on_the_running_loop(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(auto_width=False)).start()
    try:
        done_at = {}
        long = Sequence(ids(tok, "nine hundred and ninety-nine thousand, nine hundred and ninety-seventh"), max_new_tokens=200)
        long.future.add_done_callback(lambda f: done_at.setdefault("long", time.monotonic()))
        engine.submit(long)
        while not long.tokens:  # the long one is decoding
            time.sleep(0.001)
        short = Sequence(ids(tok, "one"), max_new_tokens=100)
        short.future.add_done_callback(lambda f: done_at.setdefault("short", time.monotonic()))
        engine.submit(short)
        assert tok.decode(short.future.result(timeout=30)) == "un"
        long.future.result(timeout=30)
        assert done_at["short"] < done_at["long"]
    finally:
        engine.stop()


def test_deadline_and_cancel_leave_the_batch(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(auto_width=False))
    late = engine.submit(Sequence(ids(tok, "Friday, March 14, 2025"), max_new_tokens=100, deadline=time.monotonic() + 3600))
    gone = engine.submit(Sequence(ids(tok, "Thursday, April 12, 1973"), max_new_tokens=100))
    engine.step()
    late.deadline = time.monotonic() - 1  # expired while decoding
    gone.cancel()
    engine.step()
    assert late.finish_reason == "deadline" and gone.finish_reason == "cancelled"
    assert late.future.done() and gone.future.done()
    assert engine.load == (0, 0) and engine.batch.valid.shape == (0, 0)  # caches freed


def test_max_new_tokens_and_streaming_callback(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(auto_width=False))
    seen = []
    seq = engine.submit(Sequence(ids(tok, "Friday, March 14, 2025"), max_new_tokens=3, on_token=seen.append))
    run_until_idle(engine)
    assert seq.finish_reason == "length" and len(seq.future.result()) == 3 and seen == seq.future.result()


def test_queue_is_bounded(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_queue=2, auto_width=False))
    engine.submit(Sequence(ids(tok, "one"), 5))
    engine.submit(Sequence(ids(tok, "two"), 5))
    with pytest.raises(QueueFull):
        engine.submit(Sequence(ids(tok, "three"), 5))
    # A request's sequences are queued together or not at all.
    roomy = DecodeEngine(rt, EngineOptions(max_queue=3, auto_width=False))
    roomy.submit(Sequence(ids(tok, "one"), 5))
    with pytest.raises(QueueFull):
        roomy.submit_all([Sequence(ids(tok, t), 5) for t in ("two", "three", "four")])
    assert roomy.load == (0, 1)


def test_cache_columns_are_trimmed_when_old_rows_leave(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(auto_width=False))
    first = engine.submit(Sequence(ids(tok, "one"), max_new_tokens=100))
    engine.step()  # first decodes alone for one step
    second = engine.submit(Sequence(ids(tok, "The deadline is Thursday, April 12, 1973."), max_new_tokens=100))
    while first.finish_reason is None:
        engine.step()
    engine.step()  # the next schedule retires the first row
    assert engine.active == [second]
    assert engine.batch.valid.shape[1] == engine.batch.valid[0].sum()  # columns only the retired row used are gone
    run_until_idle(engine)
    assert tok.decode(second.future.result()) == "La date limite est le jeudi 12 avril 1973."


def test_captioner_through_the_engine(repo):
    rt = EncoderDecoderRuntime(repo / "captioner" / "1")
    canvases, _, _ = D.make_scenes(D.digit_splits()["test"], 12, seed=2)
    images = canvases[:, None].astype(np.float32) / 255
    engine = DecodeEngine(rt, EngineOptions(max_batch=4, auto_width=False))
    seqs = [engine.submit(Sequence(img, max_new_tokens=40)) for img in images]
    run_until_idle(engine)
    assert [s.future.result() for s in seqs] == rt.generate(images, None, DecodingOptions(max_new_tokens=40))


# ------------------------------------------------------------------------------------ admission

# One of the longest decodes the shipped translator makes: 19 tokens and EOS. (It once looped to max_new_tokens; the
# retrained model ends it, and the repetition guard would end any loop.)
LOOP = "nine hundred ninety-nine thousand nine hundred ninety-nine, " * 8


def test_the_batch_never_grows_past_its_limit(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_batch=8, auto_width=False))
    engine.batch_limit = 2  # as calibration would set it
    seqs = engine.submit_all([Sequence(ids(tok, LOOP), 6) for _ in range(5)])
    widths = []
    while any(s.finish_reason is None for s in seqs):
        engine.step()
        widths.append(len(engine.batch))
    assert max(widths) == 2 and all(s.finish_reason == "length" for s in seqs)


def test_eight_concurrent_translations_all_wait_for_a_place_and_are_answered(translator):
    """Eight clients at once on a batch of one: the first engine refused seven of them ('would wait about inf ms',
    its bound 10 ms). Queueing is normal: every one is answered."""
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_batch=1, auto_width=False)).start()
    try:
        seqs = [engine.submit(Sequence(ids(tok, "Friday, March 14, 2025"), 100)) for _ in range(8)]
        outputs = [tok.decode(s.future.result(timeout=60)) for s in seqs]
    finally:
        engine.stop()
    assert outputs == [tok.decode(offline(rt, tok, ["Friday, March 14, 2025"])[0])] * 8
    assert {s.finish_reason for s in seqs} == {"eos"} and engine.finished["rejected"] == 0


def test_a_request_that_would_wait_past_its_budget_is_refused_at_once(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_batch=1, auto_width=False, max_queue_wait_s=0.05))
    engine.scheduler.step_s, engine.scheduler.steps_per_seq = 0.01, 100  # a row frees every second
    big = engine.submit_all([Sequence(ids(tok, LOOP), 40) for _ in range(3)])  # an idle engine takes it
    engine.step()
    started = time.monotonic()
    with pytest.raises(QueueFull, match="would wait about"):
        engine.submit(Sequence(ids(tok, "one"), 5))
    assert time.monotonic() - started < 0.01 and engine.load == (1, 2)
    # the request already running keeps its place even though its later sequences wait longer than the budget
    time.sleep(0.06)
    run_until_idle(engine)
    assert [s.finish_reason for s in big] == ["eos"] * 3 and all(len(s.future.result()) == 19 for s in big)


def test_a_sequence_left_waiting_past_its_budget_is_refused_then(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_batch=1, auto_width=False, max_queue_wait_s=0.020))
    running = engine.submit(Sequence(ids(tok, LOOP), 200))
    engine.step()
    late = Sequence(ids(tok, "one"), 5)
    engine.waiting.append(late)  # as if admitted by a too hopeful estimate
    time.sleep(0.03)
    engine.step()
    assert late.finish_reason == "rejected" and late.future.result() == [] and engine.load == (1, 0)
    assert engine.finished["rejected"] == 1 and running.finish_reason is None
    engine.stop()


# ------------------------------------------------------------------------------------ beams in the batch

def test_beam_requests_decode_in_the_shared_batch_and_match_the_offline_search(translator):
    rt, tok = translator
    texts = ["Friday, March 14, 2025", "nine hundred and ninety-nine", "The meeting is on Wednesday, September 27, 2084.",
             "one", "Thursday, April 12, 1973"]
    engine = DecodeEngine(rt, EngineOptions(max_batch=16, auto_width=False))
    beams = [engine.submit(Sequence(ids(tok, t), 60, beam_size=4)) for t in texts[:3]]
    engine.step()
    greedy = [engine.submit(Sequence(ids(tok, t), 60)) for t in texts[3:]]
    engine.step()
    assert len(engine.batch) == 3 * 4 + 2  # beam rows of three requests and two greedy rows in one step
    widest = 0
    while engine.load != (0, 0):
        engine.step()
        widest = max(widest, len({s.id for s in engine.batch.owner if s.finish_reason is None}))
    for seq, text in zip(beams, texts[:3]):
        src = ids(tok, text)[None]
        assert seq.future.result() == rt.generate(src, src != 0, DecodingOptions(beam_size=4, max_new_tokens=60))[0], text
    assert [s.future.result() for s in greedy] == offline(rt, tok, texts[3:])


def test_a_beam_request_waits_for_rows_and_is_cancelled_like_any_other(translator):
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_batch=4, auto_width=False))
    first = engine.submit(Sequence(ids(tok, LOOP), 50))
    engine.step()
    beam = engine.submit(Sequence(ids(tok, "one"), 50, beam_size=4))
    engine.step()
    assert beam.admitted_at_step is None and len(engine.batch) == 1  # needs four rows, three are free
    first.cancel()
    engine.step()
    assert first.finish_reason == "cancelled" and beam.admitted_at_step is not None and len(engine.batch) == 4
    beam.cancel()
    engine.step()
    assert beam.finish_reason == "cancelled" and engine.load == (0, 0)


# ------------------------------------------------------------------------------------ bounded, isolated

def test_max_new_tokens_is_clamped_to_the_model_positions(repo):
    """A caption asking for 256 tokens on noise, beside ordinary captions: the captioner has 48 positions, so it
    finishes with "length" at 48 and the captions sent beside it are answered (the first engine ran position 48,
    and ONNX Runtime's GatherND failed the whole batch)."""
    rt = EncoderDecoderRuntime(repo / "captioner" / "1")
    canvases, _, _ = D.make_scenes(D.digit_splits()["test"], 8, seed=2)
    images = canvases[:, None].astype(np.float32) / 255
    noise = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    engine = DecodeEngine(rt, EngineOptions(max_batch=16, auto_width=False))
    long = engine.submit(Sequence(noise, max_new_tokens=256))
    seqs = [engine.submit(Sequence(img, max_new_tokens=40)) for img in images]
    run_until_idle(engine)
    assert long.max_new_tokens == rt.config["decoder"]["max_len"] == 48
    assert long.finish_reason in ("eos", "length") and len(long.future.result()) <= 48
    assert [s.future.result() for s in seqs] == rt.generate(images, None, DecodingOptions(max_new_tokens=40))


def faulty(run_step, poison: int):
    """A decoder step that fails any run whose batch holds a source of ``poison`` tokens (as a broken input or a
    kernel fault would)."""

    def run(feeds, **kw):
        if (feeds["cross_mask"].sum(axis=1) == poison).any():
            raise RuntimeError("injected fault")
        return run_step(feeds, **kw)
    return run


def test_a_step_that_fails_for_one_sequence_fails_only_that_request(translator):
    rt, tok = translator
    texts = ["Friday, March 14, 2025", "nine hundred and ninety-nine", "one"]
    poison = ids(tok, "The meeting is on Wednesday, September 27, 2084.")
    assert len(poison) not in {len(ids(tok, t)) for t in texts}
    rt.run_step = faulty(rt.run_step, len(poison))
    try:
        engine = DecodeEngine(rt, EngineOptions(max_batch=8, auto_width=False)).start()
        good = [engine.submit(Sequence(ids(tok, t), 100)) for t in texts[:2]]
        bad = engine.submit(Sequence(poison, 100, beam_size=2))
        good.append(engine.submit(Sequence(ids(tok, texts[2]), 100)))
        with pytest.raises(StepFailed, match="injected fault"):
            bad.future.result(timeout=30)
        outputs = [s.future.result(timeout=30) for s in good]
        after = engine.submit(Sequence(ids(tok, "one"), 100)).future.result(timeout=30)  # the loop runs on
        engine.stop()
    finally:
        del rt.run_step
    assert bad.finish_reason == "error" and outputs == offline(rt, tok, texts) and tok.decode(after) == "un"


class Recorder:
    """Stands in for service.metrics.Metrics: keeps every observation."""

    def __init__(self) -> None:
        self.observed: list[tuple[str, dict]] = []

    def observe(self, name, value, **labels) -> None:
        self.observed.append((name, labels))

    def inc(self, *a, **k) -> None: ...

    def add_gauge(self, *a, **k) -> None: ...


def test_decoder_steps_are_sampled_for_the_histograms_and_encoder_runs_are_not(translator):
    """One decoder step in DECODER_STEP_SAMPLE reaches the step histograms (Ray's agent replays each observation:
    every step of a CPU decoder made it a CPU hog); every encoder run does."""
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_batch=4, auto_width=False, max_queue_wait_s=600))  # all wait their turn
    engine.metrics = recorder = Recorder()
    seqs = [engine.submit(Sequence(ids(tok, LOOP), max_new_tokens=256)) for _ in range(320)]  # 20 steps each, 4 at once
    run_until_idle(engine, limit=5000)
    assert {s.finish_reason for s in seqs} == {"eos"}
    steps = engine.steps
    stages = [labels["stage"] for name, labels in recorder.observed if name == "inference_compute_duration_seconds"]
    sizes = [labels["stage"] for name, labels in recorder.observed if name == "inference_batch_size"]
    assert stages.count("encoder") == sizes.count("encoder") >= 3  # every admission's encoder run
    sampled = stages.count("decoder_step")
    assert sampled == sizes.count("decoder_step")
    expected = steps / DECODER_STEP_SAMPLE  # binomial: the bounds below are > 5 standard deviations away
    assert steps >= 1500 and expected / 2 < sampled < expected * 2, (steps, sampled)


@pytest.mark.parametrize("beam, n", [(1, None), (4, 256)])
def test_the_whole_test_split_through_the_engine_equals_the_offline_search(translator, beam, n):
    """Rows join and leave mid-flight (waves of 48 sources into a batch of 32), so the cache's rows and columns are
    edited between steps (reorders, newcomers, compactions, dropped columns); the offline search (checked
    token-identical to PyTorch greedy on this split by the export) decodes each wave as one padded batch."""
    rt, tok = translator
    texts = [s for s, _ in T.build_corpus()["test"]][:n]
    engine = DecodeEngine(rt, EngineOptions(max_batch=32, auto_width=False, max_queue=10**6, max_queue_wait_s=3600))
    got, want = [], []
    for i in range(0, len(texts), 48):
        wave = texts[i : i + 48]
        seqs = engine.submit_all([Sequence(ids(tok, t), 100, beam_size=beam, length_penalty=1.0) for t in wave])
        run_until_idle(engine, limit=10_000)
        got += [s.future.result() for s in seqs]
        rows = [ids(tok, t) for t in wave]
        src = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
        for j, r in enumerate(rows):
            src[j, : len(r)] = r
        want += rt.generate(src, src != 0, DecodingOptions(beam_size=beam, max_new_tokens=100))
    assert len(got) == len(texts) and sum(g == w for g, w in zip(got, want)) == len(texts)


def test_ignore_eos_decodes_every_sequence_to_its_max_new_tokens(translator):
    """EngineOptions.ignore_eos (benchmarks and tests that need long decodes): greedy and beam rows alike pass over
    EOS and the repetition guard; without it the same requests end at EOS."""
    rt, tok = translator
    for ignore, want in ((True, [60, 60, 60]), (False, [1, 1, 1])):
        engine = DecodeEngine(rt, EngineOptions(auto_width=False, ignore_eos=ignore))
        seqs = engine.submit_all([Sequence(ids(tok, "nine"), 60), Sequence(ids(tok, "nine"), 60, beam_size=4),
                                  Sequence(ids(tok, "one"), 60)])
        run_until_idle(engine)
        assert [len(s.future.result()) for s in seqs] == want, [tok.decode(s.future.result()) for s in seqs]
        assert {s.finish_reason for s in seqs} == ({"length"} if ignore else {"eos"})


def test_a_beam_wider_than_the_chosen_width_is_decoded_alone_as_offline(translator):
    """A CPU's measured width may be 4 while beam_size goes to 8: the beam runs alone over that width, gives the offline
    search's tokens, and the greedy request behind it is answered after it."""
    rt, tok = translator
    engine = DecodeEngine(rt, EngineOptions(max_batch=16, auto_width=False))
    engine.batch_limit = 4  # what calibration chooses on a slow CPU
    text = "The meeting is on Wednesday, September 27, 2084."
    wide, after = engine.submit(Sequence(ids(tok, text), 60, beam_size=8)), engine.submit(Sequence(ids(tok, "one"), 60))
    while engine.load != (0, 0):
        engine.step()
    src = ids(tok, text)[None]
    assert wide.future.result() == rt.generate(src, src != 0, DecodingOptions(beam_size=8, max_new_tokens=60))[0]
    assert after.future.result() == offline(rt, tok, ["one"])[0]
