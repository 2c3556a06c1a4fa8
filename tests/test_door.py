"""The ingress's door (service.ingress.Door): the concurrency limit it learns from a model's "busy" refusals."""

from service.ingress import GATE_MAX_S, LIMIT_TTL_S, Door


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


def test_successes_probe_for_more_room_and_the_next_refusal_takes_it_back():
    door = Door()
    door.refused(0.0, others=4)
    for _ in range(4):
        door.succeeded()
    assert 4.9 < door.limit < 5.1  # about one more after a limit's worth of successes
    door.in_flight = 4
    assert door.shut(0.1) is None
    door.refused(0.2, others=4)
    assert door.limit == 4


def test_a_refusal_with_nothing_of_ours_in_flight_closes_the_door_briefly():
    door = Door()
    door.refused(5.0, others=0)  # other ingress replicas filled the model
    assert door.shut(5.0 + GATE_MAX_S / 2) is not None
    assert door.shut(5.0 + GATE_MAX_S * 1.01) is None  # in_flight 0 < limit 1
    door.refused(6.0, others=0)
    door.succeeded()  # a call of ours came back: a slot freed
    assert door.shut(6.001) is None


def test_a_learned_limit_is_forgotten_once_the_model_stops_refusing():
    door = Door()
    door.in_flight = 2
    door.refused(0.0, others=1)
    assert door.shut(LIMIT_TTL_S * 0.9) is not None
    assert door.shut(LIMIT_TTL_S * 1.01) is None
