"""The engine's queue and admission, without a model: queueing is normal, refusal only past a request's budget."""

import time

import pytest

from service.engine.scheduler import PRIOR_STEP_S, PRIOR_STEPS, EngineOptions, QueueFull, Scheduler, Sequence


def seq(width=1, deadline=None, submitted_at=None):
    s = Sequence(source=None, max_new_tokens=10, beam_size=width, deadline=deadline)
    if submitted_at is not None:
        s.submitted_at = submitted_at
    return s


def test_a_starting_engine_estimates_a_finite_wait():
    """Nothing has left the batch yet: the estimate comes from the priors, never infinity (the first engine answered
    'would wait about inf ms' to the second client of a fresh replica)."""
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    assert sched.expected_wait(1, live_rows=32, limit=32, now=now) == pytest.approx(PRIOR_STEPS * PRIOR_STEP_S / 32)
    assert sched.expected_wait(1, live_rows=31, limit=32, now=now) == 0.0


def test_requests_queue_behind_a_full_batch_instead_of_being_refused():
    sched = Scheduler(EngineOptions(max_queue_wait_s=1.0))
    now = time.monotonic()
    for _ in range(64):  # 64 clients behind a full batch of 32: a few batches' worth of waiting, well within 1 s
        sched.submit([seq()], live_rows=32, limit=32, now=now)
    assert len(sched.waiting) == 64


def test_a_request_that_cannot_make_its_budget_is_refused_at_once():
    """Without a deadline: queued while the expected wait is within max_queue_wait_s (it is refused undecoded if it
    waits longer). With one: while it is at most WAIT_SHARE (half) of what the deadline leaves, as the estimate is a
    running mean and a queue filled to the whole deadline sent a third of the requests under a sustained overload
    past it (504: decoded for nothing)."""
    from service.engine.scheduler import WAIT_SHARE

    assert WAIT_SHARE == 0.5
    sched = Scheduler(EngineOptions(max_queue_wait_s=2.0))
    sched.step_s, sched.steps_per_seq = 0.01, 50  # a full batch of 4 frees a row every 0.125 s
    now = time.monotonic()
    for _ in range(16):
        sched.submit([seq()], live_rows=4, limit=4, now=now)  # the 16th waits for 16 rows to leave: 2.0 s, its budget
    with pytest.raises(QueueFull, match="would wait about 2125 ms for a place in the batch, over its budget of 2000 ms") as refused:
        sched.submit([seq()], live_rows=4, limit=4, now=now)
    assert refused.value.reason == "expected_wait" and len(sched.waiting) == 16
    # a request whose own deadline leaves more than twice the wait may wait for it
    sched.submit([seq(deadline=now + 5)], live_rows=4, limit=4, now=now)
    # and one whose deadline leaves less than twice the wait once its own decoding (10 steps of 10 ms) is counted is
    # refused now, not left to time out
    with pytest.raises(QueueFull, match="over half its budget of 4300 ms"):
        sched.submit([seq(deadline=now + 4.4)], live_rows=4, limit=4, now=now)


def test_queue_bound_counts_rows_and_a_request_is_queued_whole_or_not_at_all():
    sched = Scheduler(EngineOptions(max_queue=8))
    now = time.monotonic()
    sched.submit([seq(width=4)], live_rows=0, limit=32, now=now)
    with pytest.raises(QueueFull, match="4 rows already waiting, room for 8") as refused:
        sched.submit([seq(), seq(width=4)], live_rows=0, limit=32, now=now)
    assert refused.value.reason == "queue_full" and len(sched.waiting) == 1


def test_a_beam_wider_than_the_batch_width_runs_alone_and_only_one_wider_than_max_batch_is_refused():
    """A CPU's measured width may be 4 while beam_size goes to 8: such a beam waits until the batch is empty and then
    runs alone, over the width; what comes after it waits for it (it is not overtaken, or it would starve)."""
    sched = Scheduler(EngineOptions(max_batch=32))
    now = time.monotonic()
    wide, after = seq(width=8), seq()
    sched.submit([wide], live_rows=2, limit=4, now=now)
    sched.submit([after], live_rows=2, limit=4, now=now)
    assert sched.admit(2, now, limit=4) == ([], [])  # two rows still decoding: it waits, and so does what is behind it
    assert sched.admit(4, now, limit=4) == ([wide], [])  # the batch empty: alone, 8 rows over a width of 4
    assert sched.admit(4 - 8, now, limit=4) == ([], [])
    with pytest.raises(QueueFull, match="beam_size 8 needs more rows than the batch holds .4."):
        Scheduler(EngineOptions(max_batch=4)).submit([seq(width=8)], live_rows=0, limit=4, now=now)


def test_admission_is_first_come_first_served_by_rows():
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    one, beam, two = seq(), seq(width=4), seq()
    for s in (one, beam, two):
        sched.submit([s], live_rows=32, limit=32, now=now)
    admitted, dropped = sched.admit(3, now)
    assert admitted == [one] and dropped == []  # the beam needs 4: it waits, and the one behind it is not let past
    admitted, _ = sched.admit(5, now)
    assert admitted == [beam, two]


def test_cancelled_expired_and_overdue_sequences_are_dropped_with_their_reason():
    sched = Scheduler(EngineOptions(max_queue_wait_s=0.5))
    now = time.monotonic()
    cancelled, expired = seq(), seq(deadline=now + 0.01)
    old, patient, fresh = seq(submitted_at=now - 1), seq(deadline=now + 10, submitted_at=now - 1), seq()
    for s in (cancelled, expired, old, patient, fresh):
        sched.waiting.append(s)
    cancelled.cancel()
    admitted, dropped = sched.admit(0, now + 0.02)
    assert admitted == [] and dropped == [(cancelled, "cancelled"), (expired, "deadline"), (old, "rejected")]
    assert list(sched.waiting) == [patient, fresh]  # a request with a deadline waits up to it, not the default


def test_the_estimate_follows_what_the_loop_measured():
    sched = Scheduler(EngineOptions())
    for _ in range(200):
        sched.observed_step(0.002)
        sched.observed_finish(10)
    assert sched.step_s == pytest.approx(0.002, rel=1e-3) and sched.steps_per_seq == pytest.approx(10, rel=1e-3)
    now = time.monotonic()
    # 16 rows to free from a batch of 16, each row staying 10 steps of 2 ms: 20 ms
    assert sched.expected_wait(1, live_rows=16, limit=16, now=now) == pytest.approx(1 * 10 * 0.002 / 16, rel=1e-2)


@pytest.mark.parametrize("bad", [{"max_queue_wait_s": 0}, {"max_batch": 0}, {"max_queue": -1}, {"scheduling": "x"}])
def test_options_are_validated(bad):
    with pytest.raises(ValueError):
        EngineOptions(**bad)


def test_sequences_past_their_deadline_hold_no_place_in_the_wait_estimate():
    """A request arriving after the sequences ahead of it ran out of time, but before the loop's next step dropped
    them, is not refused for them (CI once refused a request for "1589 ms" of such sequences)."""
    sched = Scheduler(EngineOptions(max_queue_wait_s=0.001))
    now = time.monotonic()
    for _ in range(50):
        sched.waiting.append(seq(deadline=now + 0.01))
    assert sched.expected_wait(1, live_rows=4, limit=4, now=now) > 0.001
    later = now + 0.02  # all fifty expired; nothing has stepped since
    assert sched.waiting_rows(later) == 0
    sched.submit([seq()], live_rows=3, limit=4, now=later)  # a free row, nobody ahead: admitted


def test_a_request_is_tried_when_a_place_is_free_however_short_its_deadline():
    """Refusal is for the queue: with a free row, a 1 ms deadline is admitted (and answered 504 if it runs out),
    not told to retry."""
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    sched.submit([seq(deadline=now + 0.001)], live_rows=0, limit=4, now=now)
    assert len(sched.waiting) == 1


def test_a_request_of_many_sequences_gets_its_share_of_the_batch_not_all_of_it():
    """64 long texts from one client, then 8 ordinary requests: the ordinary ones start at the next step instead of
    waiting behind all 64 (beside such a request, 16 clients got one 503 for every 200)."""
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    big = [seq() for _ in range(64)]
    sched.submit(big, live_rows=0, limit=16, now=now)
    first, _ = sched.admit(16, now, limit=16)
    assert first == big[:16] and sched.held == {big[0]: 16}
    small = [seq() for _ in range(8)]
    for s in small:
        sched.submit([s], live_rows=16, limit=16, now=now)
    for s in first[:8]:  # eight of the big request's rows finish
        sched.left(s)
    admitted, _ = sched.admit(8, now, limit=16)
    assert admitted == small  # share 16 // 9 = 1 each: the big request holds 8 already
    for s in small[:4]:
        sched.left(s)
    admitted, _ = sched.admit(4, now, limit=16)
    assert admitted == big[16:20]  # nobody else is waiting: the big request goes on, first come, first served
    assert sched.held[big[0]] == 12 and all(sched.held[s] == 1 for s in small[4:])


def test_an_owed_beam_that_does_not_fit_yet_is_not_overtaken():
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    beam, one = seq(width=4), seq()
    for s in (beam, one):
        sched.submit([s], live_rows=16, limit=16, now=now)
    assert sched.admit(2, now, limit=16)[0] == []  # two rows free: the beam waits, and so does the one behind it
    assert sched.admit(5, now, limit=16)[0] == [beam, one]


def test_waiting_beams_count_all_their_rows_in_the_wait_estimate():
    """A beam is placed whole: under overload, when the fair share is one row a request, a waiting beam of four still
    takes four rows before a newcomer (counted as one, the estimate was 4× short for beams and admitted requests ran
    out of time)."""
    sched = Scheduler(EngineOptions(max_queue_wait_s=1000.0))
    now = time.monotonic()
    for _ in range(40):
        sched.submit([seq(width=4)], live_rows=16, limit=16, now=now)  # a full batch, a queue of beams
    assert sched.rows_ahead(now, 16) == 160


def test_admission_does_not_rescan_the_queue_for_each_arrival(monkeypatch):
    """Each arrival used to rescan the whole queue (quadratic: under 3× overload ~1,000 queued rows were read for each
    of ~500 arrivals a second, under the engine's lock). Now submit adds its own request to a running count, a step
    subtracts what it took while every waiting request is one sequence, and only a step with requests of several
    sequences waiting has the next arrival count the queue again (once)."""
    reads = [0]
    gone = Sequence.gone

    def counted(self, now):
        reads[0] += 1
        return gone(self, now)
    monkeypatch.setattr(Sequence, "gone", counted)
    sched = Scheduler(EngineOptions(max_queue=10**6, max_queue_wait_s=1e6))
    now = time.monotonic()
    for _ in range(2000):
        sched.submit([seq()], live_rows=16, limit=16, now=now)
    assert reads[0] < 10, reads[0]  # one count of an empty queue; the quadratic scan read ~2 million
    admitted, _ = sched.admit(4, now, limit=16)  # a step ...
    for s in admitted[:2]:
        sched.left(s)  # ... and two sequences finish
    reads[0] = 0
    for _ in range(100):
        sched.submit([seq()], live_rows=16, limit=16, now=now)
    assert reads[0] < 2 * 4 + 10, reads[0]  # admit reads what it takes; nothing rescans the 2,000 waiting
    sched.submit([seq(), seq()], live_rows=16, limit=16, now=now)  # a request of two texts
    sched.admit(1, now, limit=16)
    reads[0] = 0
    sched.submit([seq()], live_rows=16, limit=16, now=now)
    assert 2000 <= reads[0] < 2200, reads[0]  # its share depends on everyone's: counted again, once
    reads[0] = 0
    sched.submit([seq()], live_rows=16, limit=16, now=now)
    assert reads[0] < 10, reads[0]


@pytest.mark.parametrize("several", [0.0, 0.2])  # share of arrivals with several texts
def test_the_running_count_follows_the_full_count_through_random_traffic(several):
    """Arrivals (one text, several, beams), steps, finishes, cancellations and deadlines passing, at random: the queue's
    running count is the full count, or (with requests of several texts waiting) above it by at most their rows."""
    import random

    rng = random.Random(0)
    sched = Scheduler(EngineOptions(max_queue=10**6, max_queue_wait_s=1e6))
    now, decoding = 1000.0, []
    for _ in range(3000):
        now += rng.expovariate(200)
        op = rng.random()
        if op < 0.5:
            n = rng.randint(2, 6) if rng.random() < several else 1
            width = 4 if rng.random() < 0.2 else 1
            deadline = now + rng.uniform(0.005, 0.3) if rng.random() < 0.5 else None
            try:
                sched.submit([seq(width=width, deadline=deadline) for _ in range(n)], live_rows=16, limit=16, now=now)
            except QueueFull:
                pass
        elif op < 0.75:
            admitted, _ = sched.admit(rng.randint(0, 4), now, limit=16)
            decoding += admitted
        elif op < 0.9 and decoding:
            sched.left(decoding.pop(rng.randrange(len(decoding))))
        elif sched.waiting:
            rng.choice(list(sched.waiting)).cancel()
        if any(s.cancelled for s in sched.waiting):
            continue  # a cancelled sequence is counted until the next step drops it: compare after that
        running, full = sched._counted(now, 16), sched._recount(now, 16)
        assert running.queued == full.queued and running.requests >= full.requests, (running, full)
        assert full.ahead <= running.ahead <= full.ahead + 4 * full.multi, (running, full)
        if full.multi == 0:
            assert running.ahead == full.ahead, (running, full)


@pytest.mark.parametrize("requests", [
    [[1]] * 40,  # many one-row requests: the share is one row each
    [[4]] * 12 + [[1]] * 5,  # beams and greedy
    [[1] * 64, [1], [4], [1] * 3],  # a big request beside small ones (the shares shrink as requests arrive)
])
def test_the_running_count_is_the_full_count_or_above_it_by_the_shares_shrinking(requests):
    sched = Scheduler(EngineOptions(max_queue=10**6, max_queue_wait_s=1e6))
    now = time.monotonic()
    for widths in requests:
        sched.submit([seq(width=w) for w in widths], live_rows=16, limit=16, now=now)
        running, full = sched._counted(now, 16), sched._recount(now, 16)
        assert (running.queued, running.requests, running.length) == (full.queued, full.requests, full.length)
        assert full.ahead <= running.ahead <= full.ahead + sum(max(0, sum(w) - 1) for w in requests)
        if all(len(w) == 1 for w in requests):  # one sequence a request: exact
            assert running.ahead == full.ahead


def test_submitted_sequences_past_their_deadline_are_not_counted_by_the_next_arrival():
    """The running count is redone once a queued deadline has passed (CI once refused a request for "1589 ms" of
    expired sequences the loop had not yet dropped)."""
    sched = Scheduler(EngineOptions(max_queue_wait_s=0.001))
    now = time.monotonic()
    for _ in range(50):
        sched.submit([seq(deadline=now + 10)], live_rows=3, limit=4, now=now)
    with pytest.raises(QueueFull):
        sched.submit([seq()], live_rows=4, limit=4, now=now)
    sched.submit([seq()], live_rows=3, limit=4, now=now + 11)  # all fifty expired, nothing has stepped: admitted


def test_a_request_of_many_batch_wide_beams_takes_turns_with_the_requests_behind_it():
    """A width of 8 (a CPU's measured width) and a request of four beam-8 sequences: each time one of them leaves,
    the request holds nothing and is owed its share again. It used to take the place back at once, every time,
    while a one-row request behind it waited out its budget (503); now they take turns."""
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    big = [seq(width=8) for _ in range(4)]
    sched.submit(big, live_rows=0, limit=8, now=now)
    assert sched.admit(8, now, limit=8)[0] == [big[0]]
    one = seq(submitted_at=now + 0.001)
    sched.submit([one], live_rows=8, limit=8, now=now + 0.001)
    sched.left(big[0], now + 0.01)  # the one-row request has waited while it decoded: its turn now
    assert sched.admit(8, now + 0.01, limit=8)[0] == [one]
    assert sched.admit(7, now + 0.01, limit=8)[0] == []  # the next beam waits for the whole width (not overtaken)
    sched.left(one, now + 0.02)
    assert sched.admit(8, now + 0.02, limit=8)[0] == [big[1]]


def test_two_requests_of_many_sequences_alternate():
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    a, b = [seq(width=4) for _ in range(3)], [seq(width=4, submitted_at=now + 0.001) for _ in range(3)]
    sched.submit(a, live_rows=0, limit=4, now=now)
    sched.submit(b, live_rows=0, limit=4, now=now + 0.001)
    order = []
    for step in range(6):
        admitted, _ = sched.admit(4, now + 0.01 * (step + 1), limit=4)
        order += admitted
        for s in admitted:
            sched.left(s, now + 0.01 * (step + 1) + 0.005)
    assert order == [a[0], b[0], a[1], b[1], a[2], b[2]]


def test_an_owed_beam_is_not_overtaken_by_first_come_first_served_either():
    """64 one-row texts of one request fill a width of 8, then a beam-4 request arrives (owed 4 rows). As rows free
    one at a time, the first come, first served pass used to hand each to the big request's next text, which is far
    over its share: the beam waited until all 64 had been placed (step 60, or a 503 after 2 s)."""
    sched = Scheduler(EngineOptions())
    now = time.monotonic()
    big = [seq() for _ in range(64)]
    sched.submit(big, live_rows=0, limit=8, now=now)
    running = sched.admit(8, now, limit=8)[0]
    beam = seq(width=4, submitted_at=now + 0.001)
    sched.submit([beam], live_rows=8, limit=8, now=now + 0.001)
    for i in range(4):
        sched.left(running[i], now + 0.01 * (i + 1))
        admitted, _ = sched.admit(i + 1, now + 0.01 * (i + 1), limit=8)
        assert admitted == ([beam] if i == 3 else []), i
