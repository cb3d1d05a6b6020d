#!/usr/bin/env python
r"""Visualise a model's predictions: a picture and a JSON file per input image.

    python scripts/predict.py --config-file configs/cityscapes_ft.py --input img.png|folder \
        --output out/ [--confidence 0.5] train.init_checkpoint=output/model_final.pth
    python scripts/predict.py --model deploy/model.onnx|model.ts --input ... --output out/
"""

from d2_finetune.engine import argument_parser, user_errors
from d2_finetune.predict import run_predict


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the pictures and JSON files")
    parser.add_argument("--confidence", type=float, default=0.5, help="minimum score to show")
    parser.add_argument(
        "--model",
        help="an exported model (scripts/export_model.py) to predict "
        "with instead of a config and its weights",
    )
    args = parser.parse_args()
    with user_errors(args.debug):
        run_predict(args)


if __name__ == "__main__":
    main()
