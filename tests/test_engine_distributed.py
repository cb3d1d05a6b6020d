"""engine.distributed: a decision taken on the main process, shared with every process."""

import argparse

import pytest

from d2_finetune.engine.distributed import broadcast, decided_on_main
from d2_finetune.engine.launch import WorkerError, launch
from d2_finetune.errors import CheckpointError


def test_in_one_process_the_decision_is_taken_here():
    assert decided_on_main(lambda x: x + 1, 1) == 2
    assert broadcast({"a": 1}) == {"a": 1}
    with pytest.raises(CheckpointError, match="unreadable"):
        decided_on_main(lambda: (_ for _ in ()).throw(CheckpointError("unreadable")))


def decide_by_rank():
    from detectron2.utils import comm

    return {"decided by": comm.get_rank()}


def refuse():
    raise CheckpointError("the record is unreadable")


def share(a):
    """Worker: every process must get the main process's decision, and its error."""
    from detectron2.utils import comm

    from d2_finetune.engine.cli import user_errors

    with user_errors():
        assert decided_on_main(decide_by_rank) == {"decided by": 0}
        assert broadcast(comm.get_rank() * 10) == 0
        if a.refuse:
            try:
                decided_on_main(refuse)
            except CheckpointError as e:
                raise CheckpointError(f"rank {comm.get_rank()} stopped: {e}") from None
            raise AssertionError("the main process's error was not raised here")


def test_two_processes_get_the_main_process_decision_and_its_error():
    a = argparse.Namespace(
        num_gpus=2, num_machines=1, machine_rank=0, dist_url="auto", refuse=False
    )
    launch(share, a)  # the assertions hold in both processes
    a.refuse = True
    with pytest.raises(WorkerError, match=r"^rank 0 stopped: the record is unreadable$") as error:
        launch(share, a)
    assert error.value.__cause__ is not None
