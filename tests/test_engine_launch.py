"""engine.launch: processes started as detectron2 does, and an error reported once."""

import argparse
import os

import pytest

from d2_finetune.engine.launch import ERROR_DIR_ENV, WorkerError, launch, report_in_launcher
from d2_finetune.errors import ConfigError, DatasetError


def args(num_gpus=2, num_machines=1, dist_url="auto"):
    return argparse.Namespace(
        num_gpus=num_gpus, num_machines=num_machines, machine_rank=0, dist_url=dist_url
    )


def test_auto_dist_url_on_several_machines_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"--dist-url auto picks a port on this machine and works "
        r"on one machine only: with --num-machines > 1 give the "
        r"first machine's address, e.g\. --dist-url "
        r"tcp://<first machine>:29500",
    ):
        launch(lambda a: None, args(num_machines=2))


def test_one_process_runs_in_this_process():
    seen = []
    assert launch(lambda a: seen.append(os.getpid()) or "done", args(num_gpus=1)) == "done"
    assert seen == [os.getpid()]


def test_outside_a_launched_run_errors_are_printed_by_the_process_itself():
    assert report_in_launcher("a message") is False


def fail_on_rank(a):
    """Worker: ranks named in ``a.failing`` stop on a DatasetError naming their rank; the others
    wait for them in a collective, as training would."""
    from detectron2.utils import comm

    from d2_finetune.engine.cli import user_errors

    with user_errors():
        if comm.get_rank() in a.failing:
            raise DatasetError(f"bad input met by rank {comm.get_rank()}")
        comm.synchronize()


@pytest.mark.parametrize("failing,expected", [((1,), 1), ((0, 1), 0)])
def test_a_worker_error_is_raised_once_by_the_launcher(failing, expected, capfd):
    """Whichever processes meet the error, the launcher raises the lowest rank's message once;
    the workers print nothing themselves."""
    a = args()
    a.failing = failing
    with pytest.raises(WorkerError, match=rf"^bad input met by rank {expected}$"):
        launch(fail_on_rank, a)
    out, err = capfd.readouterr()
    assert "ERROR" not in out + err and "Traceback" not in out + err
    assert ERROR_DIR_ENV not in os.environ
