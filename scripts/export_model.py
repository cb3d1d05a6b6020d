#!/usr/bin/env python
r"""Export a config's fine-tuned model for deployment: TorchScript or ONNX, with export.json.

    python scripts/export_model.py --config-file configs/cityscapes_ft.py --format onnx \
        --output deploy/ train.init_checkpoint=output/model_final.pth

writes deploy/model.onnx (or model.ts) and deploy/export.json; see docs/export.md.
"""

import argparse
import os

from d2_finetune.engine import user_errors
from d2_finetune.export import DEFAULT_OPSET, FORMATS, export_model
from d2_finetune.export.exporter import check_request, export_config


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="folder for the model and export.json")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, 16 to 20 (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--sample-image", help="image to trace with (default: the test set's first image)"
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    args = parser.parse_args()
    from detectron2.utils.logger import setup_logger

    setup_logger(name="d2_finetune")
    with user_errors(args.debug):
        check_request(args.format, args.opset)  # before loading anything
        cfg = export_config(args.config_file, args.opts)
        manifest = export_model(
            cfg,
            args.output,
            args.format,
            opset=args.opset,
            sample_image=args.sample_image,
            source={"config_file": os.path.abspath(args.config_file), "overrides": args.opts},
        )
        path = os.path.join(args.output, manifest["model_file"])
        print(f"Wrote {path} and {os.path.join(args.output, 'export.json')}")


if __name__ == "__main__":
    main()
