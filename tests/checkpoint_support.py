"""What the checkpoint tests share: source checkpoints and the checks of a transplant.

The source checkpoints are real detectron2 Mask R-CNN models (the demo's small architecture)
with COCO's 80 classes, filled with seeded random values, so every transplanted row is
distinguishable from every other and from the target's fresh initialisation.
"""

import pickle

import torch

from detectron2.config import instantiate

from d2_finetune.checkpoint import coco_thing_classes
from d2_finetune.config import load_config
from d2_finetune.data import CITYSCAPES_THING_CLASSES

from conftest import DEMO_CONFIG

CITY = list(CITYSCAPES_THING_CLASSES)
COCO = coco_thing_classes()
# Cityscapes class -> COCO class it must start from (rider: none).
EXPECTED = {
    "person": "person",
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "train": "train",
    "motorcycle": "motorcycle",
    "bicycle": "bicycle",
}
CLS = "roi_heads.box_predictor.cls_score."
BOX = "roi_heads.box_predictor.bbox_pred."
MASK = "roi_heads.mask_head.predictor."
CLASS_KEYS = [p + s for p in (CLS, BOX, MASK) for s in ("weight", "bias")]


def build(*overrides, seed=None, config=DEMO_CONFIG):
    """The demo architecture (8 Cityscapes classes unless overridden); ``seed`` fills every
    tensor with seeded random values."""
    torch.manual_seed(0)
    model = instantiate(load_config(config, list(overrides)).model)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for value in model.state_dict().values():
                value.copy_(torch.randn(value.shape, generator=generator))
    return model


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_pkl(path, state, **extra):
    with open(path, "wb") as f:
        pickle.dump(
            {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test", **extra}, f
        )
    return str(path)


def coco_checkpoints(tmp_path_factory):
    """An 80-class source in the three formats: model-zoo pkl, our pth, bare state dict (the
    test modules' module-scoped ``coco`` fixture)."""
    root = tmp_path_factory.mktemp("coco_ckpt")
    state = snapshot(build("model.roi_heads.num_classes=80", seed=1))
    torch.save({"model": state, "thing_classes": COCO, "iteration": 9}, root / "model.pth")
    torch.save(state, root / "state.pth")
    return {
        "state": state,
        "root": root,
        "pkl": save_pkl(root / "model_final.pkl", state),
        "pth": str(root / "model.pth"),
        "state_dict": str(root / "state.pth"),
    }


def assert_transplanted(model, before, source, mapping, agnostic_source=False):
    """Rows of matched classes equal the source's, the others keep ``before``."""
    after = model.state_dict()
    k = len(CITY)
    for t, name in enumerate(CITY):
        s = COCO.index(mapping[name]) if mapping.get(name) else None
        for key, unit in ((CLS, 1), (BOX, 4), (MASK, 1)):
            for suffix in ("weight", "bias"):
                full = key + suffix
                rows = slice(t * unit, (t + 1) * unit)
                if s is None:
                    assert torch.equal(after[full][rows], before[full][rows]), (full, name)
                    for other in range(source[full].shape[0] // unit):
                        src_rows = source[full][other * unit : (other + 1) * unit]
                        assert not torch.equal(after[full][rows], src_rows), (full, name)
                else:
                    src = (
                        slice(0, unit)
                        if agnostic_source and key != CLS
                        else (slice(s * unit, (s + 1) * unit))
                    )
                    assert torch.equal(after[full][rows], source[full][src]), (full, name)
    for suffix in ("weight", "bias"):
        assert torch.equal(after[CLS + suffix][k], source[CLS + suffix][80]), "background row"


def assert_class_independent_loaded(model, source, skip=()):
    after = model.state_dict()
    for key, value in after.items():
        if key not in CLASS_KEYS and key not in skip:
            assert torch.equal(value, source[key]), key
