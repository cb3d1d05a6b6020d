#!/usr/bin/env python
"""Check a Cityscapes download, build its annotation cache and print a summary.

    python scripts/prepare_cityscapes.py [--root R] [--train-ids]

--train-ids also writes *_gtFine_instanceTrainIds.png and *_gtFine_labelTrainIds.png.
"""
from d2_finetune.data.prepare_cityscapes import main

if __name__ == "__main__":
    main()
