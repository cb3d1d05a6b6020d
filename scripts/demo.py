#!/usr/bin/env python
"""Run the fine-tuning recipe end to end offline (see d2_finetune/demo/pipeline.py)."""

import argparse
import os

from d2_finetune.demo import DemoFiles, run_demo
from d2_finetune.engine import user_errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args()
    files = DemoFiles(
        standin_config=os.path.join(REPO, "configs", "demo", "coco_standin.py"),
        finetune_config=os.path.join(REPO, "configs", "demo", "cityscapes_demo.py"),
        train_net=os.path.join(REPO, "scripts", "train_net.py"),
    )
    with user_errors(args.debug):
        run_demo(files, args.output_dir)
