"""The offline demo and its stand-ins: synthetic datasets in real on-disk formats
(:mod:`.synthetic`, also used by the tests and benchmarks) and the demo's pipeline
(:mod:`.pipeline`: a stand-in COCO checkpoint, fine-tuning, predictions)."""

from .pipeline import (
    DemoFiles,
    demo_paths,
    make_calibrated_init,
    run_demo,
    run_train_net,
    save_model_zoo_pkl,
    standin_overrides,
)

__all__ = [
    "DemoFiles",
    "demo_paths",
    "make_calibrated_init",
    "run_demo",
    "run_train_net",
    "save_model_zoo_pkl",
    "standin_overrides",
]
