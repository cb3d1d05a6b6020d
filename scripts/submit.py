#!/usr/bin/env python
"""Submit training to a SLURM cluster (submitit): one process per GPU on each node, requeued
with --resume at the time limit and on preemption.

    python scripts/submit.py --config-file configs/cityscapes_ft.py --nodes 2 --gpus-per-node 8 \
        --partition gpu --timeout-min 1440 [--account ACCOUNT] [--cpus-per-task 10] \
        [--dry-run] [--resume] [key=value ...]

Details: docs/distributed.md.
"""

import os

from d2_finetune.engine import user_errors
from d2_finetune.engine.submit import describe, plan_submission, submit, submit_argument_parser

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")

if __name__ == "__main__":
    args = submit_argument_parser(__doc__).parse_args()
    with user_errors(args.debug):
        plan = plan_submission(args, TRAIN_NET)  # bad input stops here, before anything is sent
        if args.dry_run:
            print(describe(plan, sbatch=True))
            print("Nothing submitted (--dry-run).")
        else:
            submit(plan, wait=args.wait)
