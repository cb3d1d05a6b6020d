#!/usr/bin/env python
"""Training throughput: stock Detectron2's Cityscapes pipeline vs ours, same machine, same run.

(a) stock: detectron2's DefaultTrainer with the yacs recipe ``Cityscapes/mask_rcnn_R_50_FPN.yaml``
    and detectron2's builtin Cityscapes dataset (polygon masks), float32, the recipe's 4 loader
    workers;
(b) ours: ``scripts/train_net.py --config-file configs/cityscapes_ft.py`` (AMP float16 on GPUs,
    cropped masks, OpenCV PNG decoding, loader workers from the CPU count, channels-last
    convolutions, page-locked batches copied without blocking, tensors shared by file name).

Both read the same generated Cityscapes-layout PNGs from local disk and start from the same
weights (a random init with calibrated FrozenBN, saved once). Each runs in its own process.
Steady-state figures are the medians detectron2's IterationTimer logs over the last 20
iterations (metrics.json), so both sides are measured the same way.

    python bench/train_throughput.py                 # GPU: 2048x1024, 192 images, 40 iterations
    python bench/train_throughput.py --smoke         # CPU: tiny images and model, 3 iterations
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "cityscapes_ft.py")
# --smoke: configs/cityscapes_ft.py with the demo's ResNet-18 / 64-channel FPN, for a CPU.
SMOKE_CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")


# Our pipeline with one of its settings changed, to measure what each is worth.
VARIANTS = {
    "ours+cudnn": ["train.cudnn_benchmark=True"],
    "ours+nchw": ["train.channels_last=False"],  # convolutions in NCHW, as detectron2's
    "ours+nopin": ["dataloader.train.pin_memory=False"],  # pageable batches, blocking copies
    "ours+fdsharing": ["train.tensor_sharing=file_descriptor"],  # torch's default
    # all three as detectron2 has them
    "ours+stocklevers": [
        "train.channels_last=False",
        "dataloader.train.pin_memory=False",
        "train.tensor_sharing=file_descriptor",
    ],
}


def generate(root, num_images, size, unique):
    """``num_images`` Cityscapes-layout images: ``unique`` rendered ones, the rest hard links
    to them under other names (the loaders read every file; content repeats)."""
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", "train")
    if os.path.isdir(image_dir) and sum(len(f) for _, _, f in os.walk(image_dir)) >= num_images:
        return
    from d2_finetune.demo.synthetic import make_cityscapes, make_cityscapes_parallel

    make_cityscapes_parallel(root, "train", min(unique, num_images), size=size)
    # A small val split: the config names one for evaluation (not run here).
    make_cityscapes(root, {"val": 2}, size=size, seed=999)
    sources = []
    for city in sorted(os.listdir(image_dir)):
        for name in sorted(os.listdir(os.path.join(image_dir, city))):
            sources.append((city, name[: -len("_leftImg8bit.png")]))
    copy = 0
    while len(sources) + copy < num_images:
        city, stem = sources[copy % len(sources)]
        new_city = f"copy{copy // len(sources):02d}"
        for kind, suffixes in (
            ("leftImg8bit", ["_leftImg8bit.png"]),
            (
                "gtFine",
                ["_gtFine_polygons.json", "_gtFine_instanceIds.png", "_gtFine_labelIds.png"],
            ),
        ):
            dst_dir = os.path.join(root, "cityscapes", kind, "train", new_city)
            os.makedirs(dst_dir, exist_ok=True)
            for suffix in suffixes:
                os.link(
                    os.path.join(root, "cityscapes", kind, "train", city, stem + suffix),
                    os.path.join(dst_dir, f"{new_city}_{copy:06d}_000019" + suffix),
                )
        copy += 1


def make_init(root, out_file, smoke):
    """Random weights of the 8-class model with FrozenBN calibrated on real images."""
    if os.path.isfile(out_file):
        return
    from d2_finetune.demo import make_calibrated_init

    overrides = [
        f"dataloader.register.root={root}",
        "dataloader.train.total_batch_size=2",
        "train.seed=0",
        f"train.output_dir={os.path.dirname(out_file)}",
    ]
    make_calibrated_init(SMOKE_CONFIG if smoke else CONFIG, overrides, out_file)


def last_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "time" in r][-1]


def run_stock(args):
    os.environ["DETECTRON2_DATASETS"] = args.root  # read by detectron2's builtin registration
    import torch

    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer, default_setup

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Cityscapes/mask_rcnn_R_50_FPN.yaml"))
    cfg.MODEL.WEIGHTS = args.init
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.DATASETS.TEST = ()  # throughput only
    cfg.SOLVER.IMS_PER_BATCH = args.batch
    cfg.SOLVER.MAX_ITER = args.iters
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    cfg.SOLVER.AMP.ENABLED = False
    cfg.DATALOADER.NUM_WORKERS = args.stock_workers
    cfg.OUTPUT_DIR = args.output
    if args.smoke:
        cfg.MODEL.RESNETS.DEPTH = 18
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.FPN.OUT_CHANNELS = 64
        cfg.INPUT.MIN_SIZE_TRAIN = (args.height,)
        cfg.INPUT.MAX_SIZE_TRAIN = args.width
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False))
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg.DATALOADER.NUM_WORKERS


class ProfileSteps:
    """A hook that runs torch.profiler over a few steady-state iterations and writes tables of
    the operators by host (CPU) time and by device time, plus the share of wall time the GPU
    was busy."""

    def __init__(self, first, count, out_file):
        from detectron2.engine import HookBase

        class _Hook(HookBase):
            def before_step(hook):
                if hook.trainer.iter == first:
                    import torch

                    acts = [torch.profiler.ProfilerActivity.CPU]
                    if torch.cuda.is_available():
                        acts.append(torch.profiler.ProfilerActivity.CUDA)
                        torch.cuda.synchronize()
                    hook.prof = torch.profiler.profile(activities=acts)
                    hook.prof.__enter__()
                    hook.start = time.perf_counter()

            def after_step(hook):
                if hook.trainer.iter == first + count - 1:
                    import torch

                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - hook.start
                    hook.prof.__exit__(None, None, None)
                    ka = hook.prof.key_averages()
                    device = sum(e.self_device_time_total for e in ka) / 1e6
                    with open(out_file, "w") as f:
                        f.write(
                            f"{count} iterations: wall {wall:.3f} s, device busy (sum of kernel "
                            f"times) {device:.3f} s\n\n"
                        )
                        f.write(ka.table(sort_by="self_cpu_time_total", row_limit=30))
                        f.write("\n\n")
                        if torch.cuda.is_available():
                            f.write(ka.table(sort_by="self_device_time_total", row_limit=30))

        self.hook = _Hook()


def run_ours(args):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(REPO, "scripts", "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    overrides = [
        f"dataloader.register.root={args.root}",
        f"train.init_checkpoint={args.init}",
        f"train.output_dir={args.output}",
        "train.epochs=null",  # the recipe's schedule in epochs gives way to an iteration count
        f"train.max_iter={args.iters}",
        f"lr_multiplier.steps=[{args.iters - 1}]",
        f"lr_multiplier.warmup_iters={min(500, args.iters)}",
        f"dataloader.train.total_batch_size={args.batch}",
        f"train.amp.enabled={not args.fp32}",
        "train.eval_period=0",
        "train.eval_after_train=False",
        "train.checkpointer.period=1000000",
    ]
    if args.smoke:
        overrides += [
            f"dataloader.train.mapper.augmentations.0.short_edge_length=[{args.height}]",
            f"dataloader.train.mapper.augmentations.0.max_size={args.width}",
        ]
    config = SMOKE_CONFIG if args.smoke else CONFIG
    cli = train_net.argument_parser().parse_args(["--config-file", config, *overrides, *args.extra])
    if not (args.profile or args.fixed_batch):
        train_net.main(cli)
    else:  # train_net.main's steps, with a profiling hook or a fixed batch
        import itertools

        from d2_finetune.engine import FinetuneTrainer, load, resolve_config, setup

        cfg = load(cli)
        setup(cfg, cli)
        resolve_config(cfg)
        trainer = FinetuneTrainer(cfg)
        if args.profile:
            first = max(args.iters - 6, 0)
            count = min(5, args.iters - first)
            trainer.register_hooks(
                [ProfileSteps(first, count, os.path.join(args.output, "profile.txt")).hook]
            )
        if args.fixed_batch:  # the model step alone: one loaded batch, over and over
            trainer._trainer.data_loader = itertools.repeat(next(iter(trainer.data_loader)))
        trainer.resume_or_load(resume=False)
        trainer.train()
    from d2_finetune.engine import prepare_config

    return prepare_config(
        config, overrides + args.extra, training=False
    ).dataloader.train.num_workers


def child(args):
    import torch

    start = time.time()
    workers = run_stock(args) if args.run == "stock" else run_ours(args)
    m = last_metrics(args.output)
    result = {
        "run": args.label or args.run,
        "overrides": args.extra,
        "s_per_iter": m["time"],
        "data_time": m.get("data_time"),
        "images_per_s": args.batch / m["time"],
        "loader_workers": workers,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else None,
        "wall_s": time.time() - start,
    }
    with open(os.path.join(args.output, "throughput.json"), "w") as f:
        json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="output/bench_train_throughput")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--unique", type=int, default=48, help="distinct rendered images")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stock-workers", type=int, default=4, help="the yacs recipe's default")
    parser.add_argument(
        "--runs",
        default="stock,ours",
        help="comma list of: stock, ours, ours-fp32, ours+workersN, ours+fixedbatch "
        "(the model step alone, no loader), or ours with one setting changed: "
        + ", ".join(VARIANTS),
    )
    parser.add_argument("--extra", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--fixed-batch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile 5 late iterations of 'ours' (profile.txt in its folder)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny CPU run: 256x128, R18, 3 iterations"
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--fp32", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--init", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return child(args)
    if args.smoke:
        args.width, args.height, args.images, args.unique, args.iters, args.batch = (
            256,
            128,
            8,
            4,
            3,
            2,
        )
    work = os.path.abspath(args.work_dir)
    root = os.path.join(work, "data")
    init = os.path.join(work, "init", "init.pth")
    t0 = time.time()
    generate(root, args.images, (args.width, args.height), args.unique)
    print(
        f"data: {args.images} images of {args.width}x{args.height} in {time.time() - t0:.0f} s",
        flush=True,
    )
    make_init(root, init, args.smoke)
    results = []
    for run in args.runs.split(","):
        name, fp32 = ("ours", True) if run == "ours-fp32" else (run.split("+")[0], False)
        out = os.path.join(work, run)
        os.makedirs(out, exist_ok=True)
        cmd = (
            [
                sys.executable,
                os.path.abspath(__file__),
                "--run",
                name,
                "--root",
                root,
                "--init",
                init,
                "--output",
                out,
                "--iters",
                str(args.iters),
                "--batch",
                str(args.batch),
                "--stock-workers",
                str(args.stock_workers),
                "--width",
                str(args.width),
                "--height",
                str(args.height),
                "--label",
                run,
            ]
            + (["--fp32"] if fp32 else [])
            + (["--smoke"] if args.smoke else [])
        )
        for override in VARIANTS.get(run, []):
            cmd += ["--extra", override]
        if run.startswith("ours+workers"):
            cmd += ["--extra", f"dataloader.train.num_workers={run[len('ours+workers') :]}"]
        if args.profile and run == "ours":
            cmd += ["--profile"]
        if run == "ours+fixedbatch":
            cmd += ["--fixed-batch"]
        log = os.path.join(work, f"{run}.log")
        print(f"running {run} ... (log: {log})", flush=True)
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            print(f"{run} failed (exit {proc.returncode}); last lines of {log}:")
            with open(log) as f:
                print("".join(f.readlines()[-30:]))
            continue
        with open(os.path.join(out, "throughput.json")) as f:
            results.append(json.load(f))
    from tabulate import tabulate

    rows = [
        [
            r["run"],
            f"{r['s_per_iter']:.3f}",
            f"{r['images_per_s']:.1f}",
            f"{r['data_time']:.4f}" if r["data_time"] is not None else "-",
            r["loader_workers"],
            f"{r['peak_gpu_gib']:.1f}" if r["peak_gpu_gib"] is not None else "-",
        ]
        for r in results
    ]
    print(
        tabulate(
            rows,
            headers=[
                "pipeline",
                "s/iter",
                "images/s",
                "data wait s/iter",
                "loader workers",
                "peak GPU GiB",
            ],
        )
    )
    for r in results:
        if r.get("overrides"):
            print(f"{r['run']}: {' '.join(r['overrides'])}")
    by = {r["run"]: r for r in results}
    if "stock" in by:
        for name, r in by.items():
            if name != "stock":
                print(
                    f"ratio {name} / stock: {r['images_per_s'] / by['stock']['images_per_s']:.2f}x"
                )
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if args.smoke:
        print(
            "(--smoke checks that both paths run on a CPU with tiny sizes: these are not "
            "benchmark figures)"
        )


if __name__ == "__main__":
    main()
