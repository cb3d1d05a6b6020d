#!/usr/bin/env python
"""Check a Cityscapes download, build its annotation cache and print a summary.

    python scripts/prepare_cityscapes.py [--root R] [--train-ids]

--train-ids also writes *_gtFine_instanceTrainIds.png and *_gtFine_labelTrainIds.png.
"""

import argparse
import logging

from detectron2.utils.logger import setup_logger

from d2_finetune.data.prepare_cityscapes import prepare_cityscapes, summary_table
from d2_finetune.engine import user_errors


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Check a Cityscapes download, build its annotation cache and summarise it."
    )
    parser.add_argument(
        "--root", help="folder holding cityscapes/ (default: $DETECTRON2_DATASETS or ./datasets)"
    )
    parser.add_argument(
        "--train-ids",
        action="store_true",
        help="also write *_instanceTrainIds.png and *_labelTrainIds.png",
    )
    parser.add_argument(
        "--cache-dir",
        help="cache folder (default: $D2FT_CACHE_DIR, else next to "
        "the data, else ~/.cache/d2_finetune)",
    )
    parser.add_argument("--num-workers", type=int, help="parsing processes (default: automatic)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    args = parser.parse_args(argv)
    setup_logger(name="d2_finetune", abbrev_name="d2ft").setLevel(logging.INFO)
    with user_errors(args.debug):
        records_by_split = prepare_cityscapes(
            args.root, args.train_ids, args.cache_dir, args.num_workers
        )
        print(summary_table(records_by_split))


if __name__ == "__main__":
    main()
