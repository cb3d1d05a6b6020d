"""engine.job: the command each task of a SLURM job runs."""

from d2_finetune.engine.job import task_argv, with_resume


def test_a_job_slurm_restarted_resumes_from_its_last_checkpoint():
    argv = ["--config-file", "c.py", "train.max_iter=10"]
    assert task_argv(argv, {}) == argv
    assert task_argv(argv, {"SLURM_RESTART_COUNT": "0"}) == argv
    assert task_argv(argv, {"SLURM_RESTART_COUNT": "2"}) == ["--resume", *argv]
    assert task_argv(["--resume", *argv], {"SLURM_RESTART_COUNT": "1"}) == ["--resume", *argv]


def test_resume_is_added_once_before_the_overrides():
    argv = ["--config-file", "c.py", "train.max_iter=10"]
    assert with_resume(argv) == ["--resume", *argv]
    assert with_resume(with_resume(argv)) == ["--resume", *argv]
