"""One decision for all processes.

A run of N processes (``--num-gpus N``) stays in step only while every process takes the same
decisions at the same iteration: leave the loop, save a checkpoint, count an evaluation without
improvement. The inputs of such decisions often exist on the main process only: evaluators
return their results there, and records such as ``model_best.json`` may lie on its machine's
disk alone. So a decision is taken once, on the main process, and handed to every process
(:func:`decided_on_main`); a process that decided on its own would leave the loop while the
others wait for it in the next collective.
"""

from detectron2.utils import comm

from ..errors import UserError

__all__ = ["broadcast", "decided_on_main"]


def broadcast(obj):
    """The main process's ``obj``, on every process (a collective: every process calls it)."""
    if comm.get_world_size() == 1:
        return obj
    return comm.all_gather(obj if comm.is_main_process() else None)[0]


def decided_on_main(decide, *args, **kwargs):
    """``decide(*args, **kwargs)``, run on the main process only, its result returned on every
    process. A :class:`UserError` it raises is raised on every process, so all of them stop
    together with the same message. A collective: every process calls it at the same point."""
    if comm.get_world_size() == 1:
        return decide(*args, **kwargs)
    outcome = None
    if comm.is_main_process():
        try:
            outcome = (decide(*args, **kwargs), None)
        except UserError as e:
            outcome = (None, e)
    value, error = broadcast(outcome)
    if error is not None:
        raise error
    return value
