"""The classifier host (service/classifier.py) on the real model, without Ray: requests that arrive together run as
one ONNX Runtime batch, the answers are each request's own, and the queue bound and deadlines refuse cleanly."""

import asyncio

import numpy as np
import pytest

from service import errors
from service.classifier import BatchOptions, ClassifierHost
from service.contract import ClassifyJob, Deadline
from service.runtime import RuntimeOptions


@pytest.fixture(scope="module")
def host(repo):
    return ClassifierHost(repo / "classifier" / "1", RuntimeOptions(intra_op_threads=1))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def test_requests_that_arrive_together_run_as_one_batch(host):
    host.reconfigure({"max_batch_size": 64, "batch_wait_timeout_s": 0.05})
    jobs = [ClassifyJob(images(n, seed)) for seed, n in enumerate((1, 3, 5, 7))]

    async def together():
        return await asyncio.gather(*(host.probabilities(job) for job in jobs))

    answers = asyncio.run(together())
    assert host.stats()["largest_batch"] == 16  # 1 + 3 + 5 + 7 images, one run
    for job, probs in zip(jobs, answers):
        alone = host._probabilities(job.images)
        assert probs.shape == (len(job.images), 10) and np.allclose(probs, alone, atol=1e-6)
        assert np.allclose(probs.sum(-1), 1, atol=1e-5)


def test_a_batch_never_exceeds_max_batch_size_unless_one_request_does(host):
    host.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.02})

    async def run():
        return await asyncio.gather(*(host.probabilities(ClassifyJob(images(3, i))) for i in range(3)),
                                    host.probabilities(ClassifyJob(images(9, 9))))

    answers = asyncio.run(run())
    assert [len(a) for a in answers] == [3, 3, 3, 9] and host.stats()["largest_batch"] == 9  # the big one alone


def test_past_max_queue_the_answer_is_503_at_once(host):
    host.reconfigure({"max_queue": 4})
    with pytest.raises(errors.ServiceError) as e:
        asyncio.run(host.probabilities(ClassifyJob(images(5, 1))))
    assert e.value.kind is errors.Kind.OVERLOADED and "classifier" in e.value.message
    assert len(asyncio.run(host.probabilities(ClassifyJob(images(4, 1))))) == 4


def test_a_deadline_that_passes_while_waiting_is_504_and_nothing_runs_for_it(host):
    host.reconfigure({"max_batch_size": 64, "batch_wait_timeout_s": 0.5})

    async def run():
        late = asyncio.ensure_future(host.probabilities(ClassifyJob(images(2, 3), deadline=Deadline(0.05))))
        with pytest.raises(errors.ServiceError) as e:
            await late
        assert e.value.kind is errors.Kind.DEADLINE
        await asyncio.sleep(0.6)

    asyncio.run(run())
    assert host.stats()["largest_batch"] == 0 and host.stats()["waiting"] == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown keys"):
        BatchOptions.from_user_config({"batch": 3})
    with pytest.raises(ValueError):
        BatchOptions.from_user_config({"max_batch_size": 0})
