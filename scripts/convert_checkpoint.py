#!/usr/bin/env python
"""Convert a torchvision or MMDetection COCO Mask R-CNN R50-FPN checkpoint to Detectron2's
model-zoo format, and print the config it needs.

    python scripts/convert_checkpoint.py SRC.pth DST.pkl

SRC: a torchvision ``maskrcnn_resnet50_fpn`` (v1) state dict, or an MMDetection checkpoint
(``{"meta", "state_dict"}``). DST.pkl holds ``{"model": {name: array}, "__author__",
"thing_classes", "converted_from"}`` (what it was converted from: format, sha256, class
order, the settings the weights need). Start a run from it with the printed config:

    python scripts/train_net.py --config-file configs/cityscapes_ft_from_torchvision.py \
        train.init_checkpoint=DST.pkl

Details: docs/checkpoints.md.
"""

import argparse

from d2_finetune.checkpoint.convert.files import convert_file, summary
from d2_finetune.engine import user_errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="torchvision or MMDetection checkpoint (.pth)")
    parser.add_argument("dst", help="output file in Detectron2's model-zoo format (.pkl)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    with user_errors(args.debug):
        info = convert_file(args.src, args.dst)
        print(summary(info, args.dst))


if __name__ == "__main__":
    main()
