"""Stopping on a signal (preemption, a time limit): every process saves and stops together.

SLURM warns a job before its time limit, and on clusters configured for it before a
preemption, with a signal (SIGUSR2 under submitit, ``#SBATCH --signal=USR2@<seconds>``). The
signal may reach every process of a run or only some (``kill -USR2`` of one worker), and it
arrives at any moment, in whatever a process is doing. A process that stopped on its own
would leave the others waiting for it in the next collective, so the signal only sets a flag
(:func:`install_handler`); :class:`StopOnSignal` shares the flag with one all-reduce per
iteration and, where any process has it, every process asks the trainer to stop after that
same iteration. The trainer then saves ``model_final.pth`` as every stop does: a complete
checkpoint (each process's random state gathered, written atomically by the main process,
named in ``last_checkpoint``), from which ``--resume`` continues with the weights and data
order of an uninterrupted run.

The signal is ``SIGUSR2``, or the one named by ``$SUBMITIT_PREEMPT_SIGNAL`` (``USR1``, ...), the
variable submitit reads, so a cluster set up for submitit's preemption works unchanged.
"""

import logging
import os
import signal
import threading

import torch
import torch.distributed as dist

from detectron2.engine.hooks import HookBase
from detectron2.utils import comm

from ..errors import ConfigError

__all__ = ["StopOnSignal", "install_handler", "stop_signal", "signal_received", "stopped_at"]

logger = logging.getLogger(__name__)

SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"

_received = None  # name of the stop signal once this process got it
_stopped_at = None  # the iteration after which training stopped on it
_installed = False


def stop_signal():
    """The signal that stops training: ``SIGUSR2`` unless ``$SUBMITIT_PREEMPT_SIGNAL`` names
    another (``USR1`` or ``SIGUSR1``)."""
    name = os.environ.get(SIGNAL_ENV, "USR2").upper()
    name = name if name.startswith("SIG") else "SIG" + name
    sig = getattr(signal, name, None)
    if not isinstance(sig, signal.Signals) or sig in (signal.SIGKILL, signal.SIGSTOP):
        raise ConfigError(
            f"${SIGNAL_ENV}={os.environ.get(SIGNAL_ENV)!r} is not a signal a process can catch: "
            "name one such as USR2 or USR1, or unset it (USR2)."
        )
    return sig


def _on_signal(signum, frame):
    global _received
    _received = signal.Signals(signum).name


def install_handler():
    """From now on the stop signal sets a flag in this process instead of ending it (Python's
    default for SIGUSR2) or, in a submitit job, requeueing from wherever the main process is.
    Idempotent; does nothing outside the main thread, where handlers cannot be set."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(stop_signal(), _on_signal)
    _installed = True


def signal_received():
    """The name of the stop signal if this process received it, else None."""
    return _received


def stopped_at():
    """The iteration after which training stopped on the signal, or None."""
    return _stopped_at


def _reset():
    """Forget a received signal and a stop (for tests running several trainings in one process)."""
    global _received, _stopped_at
    _received = _stopped_at = None


def any_process(flag):
    """True on every process if ``flag`` is true on any (a collective over the CPU group)."""
    if comm.get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
    return bool(value.item())


class StopOnSignal(HookBase):
    """After each iteration: if any process received the stop signal, every process asks the
    trainer to stop after this iteration (``trainer.request_stop``), which then saves a complete
    checkpoint. A signal during the last iteration lets training end as it would have; one
    received before training started (while data is parsed, say) stops it after its first
    iteration. Costs one all-reduce of an integer per iteration on the CPU (gloo) group.
    """

    def before_train(self):
        install_handler()

    def after_step(self):
        if not any_process(_received is not None):
            return
        iteration = self.trainer.iter
        if iteration + 1 >= self.trainer.max_iter or getattr(self.trainer, "_stop_reason", None):
            return  # training ends here anyway (the last iteration, or another stop)
        global _stopped_at
        _stopped_at = iteration
        name = stop_signal().name
        self.trainer.request_stop(
            f"Stopped after iteration {iteration} on {name} (preemption or time limit): "
            "model_final.pth holds this iteration's complete state and is named in "
            "last_checkpoint; --resume continues from it."
        )
