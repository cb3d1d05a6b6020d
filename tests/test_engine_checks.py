"""engine.checks: output folders a job's machines cannot share, or that cannot be written."""

import pytest

from d2_finetune.engine import checks
from d2_finetune.engine.checks import check_output_dir, check_shared_output_dir
from d2_finetune.errors import ConfigError


def test_an_output_folder_the_nodes_cannot_share_is_refused(monkeypatch):
    for folder, where in [
        ("/tmp/d2ft_run", "under /tmp, which is a different folder on every machine"),
        ("/dev/shm/d2ft_run", "on a tmpfs file system, in this machine's memory"),
    ]:
        with pytest.raises(
            ConfigError,
            match=rf"^train\.output_dir={folder} is {where}: the job's "
            r"nodes cannot read its submission or write their "
            r"logs and checkpoints there\. Choose a folder on a "
            r"file system the nodes share \(your home or project "
            r"folder\), or pass --output-is-shared if SLURM runs "
            r"the job on this very machine\.$",
        ):
            check_shared_output_dir(folder)
    # A disk that a cluster may export, or a network file system: not refused. (The file system
    # is given, so that the test does not depend on where this checkout lies: under /tmp, say.)
    for fs_type in ("ext4", "xfs", "nfs4", "lustre"):
        monkeypatch.setattr(checks, "_fs_type", lambda path, found=fs_type: found)
        check_shared_output_dir("/home/user/runs/cityscapes")
    monkeypatch.setattr(checks, "_fs_type", lambda path: "tmpfs")
    with pytest.raises(ConfigError, match=r"is on a tmpfs file system"):
        check_shared_output_dir("/home/user/runs/cityscapes")


def test_an_output_folder_is_checked_without_creating_it(tmp_path):
    """create=False (a plan, before anything is submitted) leaves no folder behind."""
    check_output_dir(str(tmp_path / "new" / "run"), create=False)
    assert not (tmp_path / "new").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for create in (True, False):
        with pytest.raises(
            ConfigError,
            match=rf"^train\.output_dir={blocker}/out is not writable \(Not a directory"
            r".*\): choose a folder you can write to\.$",
        ):
            check_output_dir(str(blocker / "out"), create=create)
