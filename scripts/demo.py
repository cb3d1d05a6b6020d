#!/usr/bin/env python
"""Run the fine-tuning recipe end to end offline (see d2_finetune/demo.py)."""
import argparse

from d2_finetune.demo import run_demo
from d2_finetune.engine import user_errors

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args()
    with user_errors(args.debug):
        run_demo(args.output_dir)
