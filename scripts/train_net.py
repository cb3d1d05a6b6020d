#!/usr/bin/env python
"""Fine-tune (or evaluate) a detector from a LazyConfig.

    python scripts/train_net.py --config-file configs/cityscapes_ft.py [--num-gpus N] \
        [--num-machines M --machine-rank R --dist-url URL] [--resume] [--eval-only] \
        [key=value ...]
"""

from detectron2.utils import comm

from d2_finetune.engine import (
    FinetuneTrainer,
    argument_parser,
    evaluate,
    launch,
    load,
    load_for_inference,
    resolve_config,
    setup,
    startup_guard,
    user_errors,
)


def main(args):
    with user_errors(args.debug):
        cfg = load(args)
        with startup_guard(cfg.train.output_dir):  # a failed start leaves no files behind
            setup(cfg, args)
            resolve_config(cfg, world_size=comm.get_world_size(), training=not args.eval_only)
            if args.eval_only:
                model = load_for_inference(cfg)
            else:
                trainer = FinetuneTrainer(cfg)
                trainer.resume_or_load(resume=args.resume)
        if args.eval_only:
            return evaluate(cfg, model)
        return trainer.train()


if __name__ == "__main__":
    args = argument_parser(__doc__).parse_args()
    with user_errors(args.debug):
        load(args)  # report config errors once, before starting worker processes
        launch(main, args)
