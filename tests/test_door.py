"""The ingress's door (service.ingress.Door): the concurrency limit it learns from a model's "busy" refusals."""

from service.ingress import GATE_MAX_S, IDLE_FORGET_S, LIMIT_TTL_S, PROBE_AFTER_S, Door


def test_an_unrefused_model_is_never_shut():
    door = Door()
    door.in_flight = 1000
    assert door.shut(0.0) is None


def test_a_busy_refusal_limits_calls_to_what_was_in_flight_beside_it():
    door = Door()
    door.in_flight = 4
    door.refused(10.0, others=3)  # the fourth call was refused while three were running
    assert door.limit == 3
    assert "in flight" in door.shut(10.001)  # four in flight (the refused one has not left yet)
    door.in_flight = 3
    assert door.shut(10.001) is not None
    door.in_flight = 2  # one finished: a slot is free
    assert door.shut(10.001) is None


def test_successes_probe_for_more_room_only_a_while_after_the_last_refusal_and_the_next_refusal_takes_it_back():
    door = Door()
    door.refused(0.0, others=4)
    for _ in range(8):  # soon after a refusal: no probing, the model just said it has no room
        door.succeeded(PROBE_AFTER_S * 0.9)
    assert door.limit == 4
    for _ in range(4):
        door.succeeded(PROBE_AFTER_S * 1.01)
    assert 4.9 < door.limit < 5.1  # about one more after a limit's worth of successes
    door.in_flight = 4
    assert door.shut(PROBE_AFTER_S * 1.02) is None
    door.refused(PROBE_AFTER_S * 1.03, others=4)
    assert door.limit == 4


def test_under_steady_overload_the_model_is_kept_busy_and_refuses_about_one_probe_per_probe_wait():
    """A model with 2 slots, each call 0.25 s, offered a call every 5 ms for 20 s (25× what it takes): the door
    refuses nearly all of them itself; what reaches the model keeps both slots busy, and the model's own refusals
    are the probes, about one per ``PROBE_AFTER_S`` plus the successes it takes to grow the limit by one."""
    door, slots, service_s, now = Door(), [], 0.25, 0.0
    successes = model_refusals = 0
    while now < 20.0:
        for done in sorted(t for t in slots if t <= now):  # calls that finished by now
            slots.remove(done)
            door.left(done)
            door.succeeded(done)
            successes += 1
        if door.shut(now) is None:
            door.entered()
            if len(slots) < 2:
                slots.append(now + service_s)
            else:
                model_refusals += 1
                door.refused(now, door.in_flight - 1)
                door.left(now)
        now += 0.005
    assert successes >= 0.9 * 20.0 * 2 / service_s  # both slots busy nearly all the time
    cycle = PROBE_AFTER_S + 2 * service_s / 2  # the wait, then a limit's worth (2) of successes at 2 per 0.25 s
    assert model_refusals <= 1.5 * 20.0 / cycle + 1  # one probe per cycle (with growth on every success: ~80)


def test_a_refusal_with_nothing_of_ours_in_flight_closes_the_door_briefly():
    door = Door()
    door.refused(5.0, others=0)  # other ingress replicas filled the model
    assert door.shut(5.0 + GATE_MAX_S / 2) is not None
    assert door.shut(5.0 + GATE_MAX_S * 1.01) is None  # in_flight 0 < limit 1
    door.refused(6.0, others=0)
    door.succeeded(6.0005)  # a call of ours came back: a slot freed
    assert door.shut(6.001) is None


def test_a_learned_limit_is_forgotten_once_the_model_stops_refusing():
    door = Door()
    door.in_flight = 2
    door.refused(0.0, others=1)
    assert door.shut(LIMIT_TTL_S * 0.9) is not None
    assert door.shut(LIMIT_TTL_S * 1.01) is None


def test_a_burst_after_a_lull_is_not_held_to_a_limit_learned_before_it():
    """Nothing of ours in flight for IDLE_FORGET_S: the model has had room since it refused, perhaps more than it had
    (an operator redeployed it with more slots), so a burst goes through and the model refuses what it must."""
    door = Door()
    door.entered(), door.entered()
    door.refused(0.0, others=1)  # the second call was refused while the first ran
    door.left(0.0), door.left(0.1)
    arrival = 0.1 + IDLE_FORGET_S * 0.9  # soon after the last call of ours left: still held to one
    assert door.shut(arrival) is None
    door.entered()
    assert door.shut(arrival) is not None
    door.left(arrival + 0.01)
    arrival += 0.01 + IDLE_FORGET_S * 1.01
    for _ in range(32):  # a burst after the lull
        assert door.shut(arrival) is None
        door.entered()
    door.refused(arrival + 0.01, others=31)  # what the model could not take still teaches the door
    assert door.limit == 31 and door.shut(arrival + 0.02) is not None
