"""Random-number-generator state as a checkpointable, so a resumed run continues the same
random streams (proposal sampling, augmentation in the main process) as an uninterrupted one."""
import random

import numpy as np
import torch

__all__ = ["RNGState"]


class RNGState:
    """``state_dict()`` / ``load_state_dict()`` of Python's, NumPy's and torch's (CPU and
    current CUDA device) global generators, stored as tensors and plain numbers."""

    def state_dict(self):
        version, mt, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": {"version": version, "mt": list(mt), "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state):
        py = state["python"]
        random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
