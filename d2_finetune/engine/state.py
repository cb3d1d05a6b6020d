"""Random-number-generator state as a checkpointable, so a resumed run continues the same
random streams (proposal sampling, augmentation in the main process) as an uninterrupted one."""

import logging
import random

import numpy as np
import torch

from detectron2.utils import comm

__all__ = ["RNGState"]

logger = logging.getLogger(__name__)


class RNGState:
    """``state_dict()`` / ``load_state_dict()`` of Python's, NumPy's and torch's (CPU and
    current CUDA device) global generators, stored as tensors and plain numbers.

    Each process of a run draws from its own streams, so the state holds one entry per
    process, in rank order: ``state_dict()`` gathers them (every process calls it, as every
    process calls the checkpointer's ``save``), and ``load_state_dict()`` gives each process
    its own. A run resumed with another number of processes cannot continue the same streams:
    it keeps the fresh ones and says so.
    """

    def state_dict(self):
        return {"ranks": comm.all_gather(_own_state())}

    def load_state_dict(self, state):
        if "ranks" not in state:  # written by one process, before states were kept per rank
            state = {"ranks": [state]}
        ranks, world_size = state["ranks"], comm.get_world_size()
        if len(ranks) != world_size:
            logger.warning(
                f"The checkpoint holds the random state of {len(ranks)} process(es) and this "
                f"run has {world_size}: random streams (augmentation, proposal sampling) start "
                "afresh instead of continuing those of the interrupted run."
            )
            return
        _restore(ranks[comm.get_rank()])


def _own_state():
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "mt": list(mt), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore(state):
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
