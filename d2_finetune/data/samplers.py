"""A training sampler that resumes where an interrupted run stopped."""

import itertools

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's TrainingSampler (the same infinite, seeded, rank-sharded index stream)
    that can skip the samples a previous run already consumed.

    After ``skip(n)`` the stream starts at global position ``n`` -- ``start_iter`` times the
    total batch when resuming -- so a resumed run sees the images an uninterrupted run would
    have seen next (exactly when batches are consecutive samples of the stream: one loader
    worker, or aspect-ratio grouping with a single orientation, as in Cityscapes).

    The stream's seed is its state (``state_dict``): a checkpoint keeps it, so a resumed run
    continues the same order even when the seed was drawn at random (``seed=None``).
    """

    def __init__(self, size, shuffle=True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._start = 0

    @property
    def seed(self):
        return self._seed

    def skip(self, num_samples):
        self._start = int(num_samples)

    def state_dict(self):
        return {"seed": self._seed}

    def load_state_dict(self, state):
        self._seed = int(state["seed"])

    def __iter__(self):
        yield from itertools.islice(
            self._infinite_indices(), self._start + self._rank, None, self._world_size
        )
