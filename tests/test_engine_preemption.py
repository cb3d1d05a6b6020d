"""engine.preemption: the stop signal becomes one decision, taken after the same iteration by
every process. (Runs of several processes stopped by the signal: test_engine_launch.py, spawned
workers; test_engine_submit.py, a submitit job requeued and resumed.)"""

import os
import signal

import pytest

from d2_finetune.engine import preemption
from d2_finetune.engine.preemption import StopOnSignal, install_handler, stop_signal
from d2_finetune.errors import ConfigError


@pytest.fixture(autouse=True)
def fresh_state():
    preemption._reset()
    yield
    preemption._reset()


def test_the_stop_signal_is_usr2_or_the_one_submitit_is_told(monkeypatch):
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert stop_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert stop_signal() == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "SIGUSR1")
    assert stop_signal() == signal.SIGUSR1


@pytest.mark.parametrize("value", ["NOPE", "KILL"])
def test_a_signal_that_cannot_be_caught_is_refused(monkeypatch, value):
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", value)
    with pytest.raises(
        ConfigError,
        match=rf"^\$SUBMITIT_PREEMPT_SIGNAL='{value}' is not a signal "
        r"a process can catch: name one such as USR2 or USR1, "
        r"or unset it \(USR2\)\.$",
    ):
        stop_signal()


class FakeTrainer:
    def __init__(self, iteration, max_iter=10, stop_reason=None):
        self.iter, self.max_iter, self._stop_reason = iteration, max_iter, stop_reason
        self.requests = []

    def request_stop(self, reason):
        self.requests.append(reason)


def after_step(trainer):
    hook = StopOnSignal()
    hook.trainer = trainer
    hook.after_step()
    return trainer.requests


def test_the_signal_only_sets_a_flag_and_the_next_iteration_stops(monkeypatch):
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    install_handler()
    assert after_step(FakeTrainer(3)) == []  # no signal: training goes on
    os.kill(os.getpid(), signal.SIGUSR2)  # the process lives on
    assert preemption.signal_received() == "SIGUSR2"
    assert after_step(FakeTrainer(3)) == [
        "Stopped after iteration 3 on SIGUSR2 (preemption or time limit): model_final.pth holds "
        "this iteration's complete state and is named in last_checkpoint; --resume continues "
        "from it."
    ]
    assert preemption.stopped_at() == 3


def test_the_last_iteration_and_another_stop_are_left_to_end_as_they_would(monkeypatch):
    monkeypatch.setattr(preemption, "_received", "SIGUSR2")
    assert after_step(FakeTrainer(9, max_iter=10)) == []  # training ends here anyway
    assert after_step(FakeTrainer(4, stop_reason="Early stopping at iteration 4")) == []
    assert preemption.stopped_at() is None  # not a stop on the signal: no requeue
