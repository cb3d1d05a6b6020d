from setuptools import find_packages, setup

setup(
    name="d2_finetune",
    version="0.1.0",
    description="Fine-tune COCO-pretrained Detectron2 detectors on new datasets",
    packages=find_packages(include=["d2_finetune", "d2_finetune.*"]),
    python_requires=">=3.9",
    # detectron2 is not on PyPI under its own name: `make` (scripts/setup_env.py) installs it,
    # keeping a source build that is already importable.
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "fvcore",
        "iopath",
        "pycocotools>=2.0.2",
        "cityscapesscripts",
        "shapely",
        "opencv-python-headless<4.11",
        "numpy<2",  # cityscapesscripts' evaluator calls np.in1d
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "matplotlib",
        "tensorboard",
        "tabulate",
        "tqdm",
        "filelock",
        "Pillow",
        # SLURM jobs (scripts/submit.py): its job environment, signal handling and requeue
        # are used from d2_finetune/engine/submit.py.
        "submitit>=1.5,<2",
    ],
    extras_require={
        # ruff pinned: `make test` checks the formatting, which changes between ruff versions.
        # pytest-xdist: `make test` runs the tests in two processes.
        "test": ["pytest", "pytest-xdist>=3", "ruff==0.17.6"],
        # ONNX export and running exported models in onnxruntime (docs/export.md); the
        # numpy<2 above makes pip pick builds that work with numpy 1.26.
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
    },
)
