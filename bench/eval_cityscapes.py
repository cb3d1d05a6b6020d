"""Cityscapes instance evaluation: d2_finetune's in-memory evaluator against detectron2's.

Generates N val images at Cityscapes size (``gtFine/val/<city>/*_gtFine_instanceIds.png``, with
stuff, void, ``<class>group`` regions and instances from a dozen pixels to a few hundred rows
tall) and ~18 predictions per image derived from the ground truth (shifted and grown masks,
missed objects, duplicates, class confusions, false positives, random scores). The predictions
are made once, kept cropped and pasted back into full-size masks for each evaluator, so every
evaluator gets the same predictions in the same run; each is timed from ``reset`` through its
``process`` calls (feeding included, the same for all) and ``evaluate``.

    python bench/eval_cityscapes.py                    # 500 images, as in the measurements
    python bench/eval_cityscapes.py --num-images 20    # a quick run
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from detectron2.data import MetadataCatalog
from detectron2.evaluation import CityscapesInstanceEvaluator as DetectronEvaluator
from detectron2.structures import Instances

from d2_finetune.data.cityscapes import CITYSCAPES_THING_CLASSES
from d2_finetune.data.common import write_uint16_png
from d2_finetune.evaluation import CityscapesInstanceEvaluator

WIDTH, HEIGHT = 2048, 1024
CITIES = ["frankfurt", "lindau", "munster"]
LABEL_IDS = {
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}
# (relative frequency, width / height) per class.
CLASS_SHAPES = {
    "person": (25, 0.4),
    "rider": (5, 0.5),
    "car": (45, 1.8),
    "truck": (5, 1.6),
    "bus": (4, 2.2),
    "train": (3, 3.5),
    "motorcycle": (4, 1.2),
    "bicycle": (9, 1.3),
}
STUFF = [(23, 0.0), (11, 0.12), (21, 0.3), (8, 0.42), (7, 0.48)]  # sky, building, vegetation,
# sidewalk, road: (label id, top as a fraction of the height)


def _ellipse_or_box(draw, rng, cx, cy, w, h, value):
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if rng.random() < 0.5:
        draw.ellipse(box, fill=int(value))
    else:
        cut = min(w, h) * 0.2
        x0, y0, x1, y1 = box
        draw.polygon(
            [(x0 + cut, y0), (x1 - cut, y0), (x1, y0 + cut), (x1, y1), (x0, y1), (x0, y0 + cut)],
            fill=int(value),
        )


def make_ground_truth(rng):
    """One instanceIds image (int32 array)."""
    canvas = Image.new("I", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(canvas)
    for label_id, top in STUFF:
        draw.rectangle([0, int(top * HEIGHT), WIDTH, HEIGHT], fill=label_id)
    for _ in range(rng.integers(0, 4)):  # static / dynamic / parking patches: void
        _ellipse_or_box(
            draw,
            rng,
            rng.uniform(0, WIDTH),
            rng.uniform(0.4, 1) * HEIGHT,
            rng.uniform(20, 300),
            rng.uniform(20, 150),
            rng.choice([4, 5, 9]),
        )
    names = list(CLASS_SHAPES)
    weights = np.array([CLASS_SHAPES[n][0] for n in names], dtype=float)
    horizon = 0.45 * HEIGHT
    objects = []
    for _ in range(rng.integers(12, 29)):
        name = names[rng.choice(len(names), p=weights / weights.sum())]
        h = float(np.exp(rng.uniform(np.log(12), np.log(380))))
        w = h * CLASS_SHAPES[name][1] * rng.uniform(0.8, 1.2)
        objects.append((h, name, rng.uniform(0, WIDTH), horizon + h * rng.uniform(0.2, 1.2), w))
    for _ in range(rng.binomial(2, 0.3)):  # crowds
        name = rng.choice(["person", "car", "bicycle"])
        h = rng.uniform(60, 250)
        objects.append(
            (
                h * 0.99,
                name + "group",
                rng.uniform(0, WIDTH),
                horizon + h * 0.6,
                h * rng.uniform(2, 5),
            )
        )
    counters = {}
    for h, name, cx, cy, w in sorted(objects):  # far (small) ones first, covered by near ones
        if name.endswith("group"):
            value = LABEL_IDS[name[: -len("group")]]
        else:
            counters[name] = counters.get(name, -1) + 1
            value = LABEL_IDS[name] * 1000 + counters[name]
        _ellipse_or_box(draw, rng, cx, min(cy, HEIGHT - h / 2), w, h, value)
    ids = np.array(canvas, dtype=np.int32)
    ids[int(0.9 * HEIGHT) :, :] = 1  # ego vehicle
    ids[:, :4] = ids[:, -4:] = ids[:4, :] = 2  # rectification border
    return ids


def make_predictions(rng, ids, target=18):
    """About ``target`` predictions for one image, derived from its ground truth."""
    id_to_class = {v: i for i, v in enumerate(LABEL_IDS[c] for c in CITYSCAPES_THING_CLASSES)}
    masks, classes, scores = [], [], []
    values = [v for v in np.unique(ids).tolist() if v >= 1000]
    rng.shuffle(values)
    for value in values[: max(0, target - int(rng.integers(1, 5)))]:
        if rng.random() < 0.1:
            continue  # missed
        gt = ids == value
        ys, xs = np.nonzero(gt)
        size = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        for _ in range(1 + (rng.random() < 0.1)):  # duplicates
            shift = np.round(rng.normal(0, 0.06 * size, 2)).astype(int)
            mask = np.roll(gt, tuple(shift.tolist()), axis=(0, 1))
            grow = int(rng.integers(0, 1 + max(1, size // 15)))
            if grow:
                mask = mask | np.roll(mask, grow, axis=0) | np.roll(mask, grow, axis=1)
            cls = id_to_class[value // 1000]
            if rng.random() < 0.08:
                cls = int(rng.integers(len(CITYSCAPES_THING_CLASSES)))
            masks.append(mask)
            classes.append(cls)
            scores.append(rng.uniform(0.05, 1.0) ** 0.5)
    while len(masks) < target:  # false positives
        mask = Image.new("L", (WIDTH, HEIGHT), 0)
        h = float(np.exp(rng.uniform(np.log(12), np.log(300))))
        _ellipse_or_box(
            ImageDraw.Draw(mask),
            rng,
            rng.uniform(0, WIDTH),
            rng.uniform(0.4, 0.95) * HEIGHT,
            h * rng.uniform(0.4, 2.5),
            h,
            1,
        )
        masks.append(np.asarray(mask) > 0)
        classes.append(int(rng.integers(len(CITYSCAPES_THING_CLASSES))))
        scores.append(rng.uniform(0.05, 0.8))
    instances = Instances((HEIGHT, WIDTH))
    instances.pred_masks = torch.from_numpy(np.stack(masks))
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    return instances


def write_dataset(root, num_images, seed):
    """Ground truth files; returns [(image file name, gt file)]."""
    files = []
    for i in range(num_images):
        city = CITIES[i % len(CITIES)]
        stem = f"{city}_{i:06d}_000019"
        gt_dir = os.path.join(root, "gtFine", "val", city)
        os.makedirs(gt_dir, exist_ok=True)
        gt_file = os.path.join(gt_dir, stem + "_gtFine_instanceIds.png")
        write_uint16_png(gt_file, make_ground_truth(np.random.default_rng([seed, i])))
        image = os.path.join(root, "leftImg8bit", "val", city, stem + "_leftImg8bit.png")
        files.append((image, gt_file))
        print(f"\rground truth {i + 1}/{num_images}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return files


def compact(instances):
    """Predictions as (class, score, y0, x0, height, width, packed mask crop) tuples."""
    preds = []
    for mask, cls, score in zip(
        instances.pred_masks.numpy(), instances.pred_classes.tolist(), instances.scores.tolist()
    ):
        ys, xs = np.nonzero(mask)
        y0, x0 = ys.min(), xs.min()
        crop = mask[y0 : ys.max() + 1, x0 : xs.max() + 1]
        preds.append((cls, score, y0, x0, crop.shape[0], crop.shape[1], np.packbits(crop)))
    return preds


class Feeder:
    """Full-size Instances of compact predictions, pasted into one reused mask buffer."""

    def __init__(self, max_predictions):
        self.buffer = np.zeros((max_predictions, HEIGHT, WIDTH), dtype=bool)
        self.used = []

    def __call__(self, preds):
        for i, y0, x0, h, w in self.used:
            self.buffer[i, y0 : y0 + h, x0 : x0 + w] = False
        self.used = []
        for i, (_, _, y0, x0, h, w, bits) in enumerate(preds):
            self.buffer[i, y0 : y0 + h, x0 : x0 + w] = np.unpackbits(bits)[: h * w].reshape(h, w)
            self.used.append((i, y0, x0, h, w))
        instances = Instances((HEIGHT, WIDTH))
        instances.pred_masks = torch.from_numpy(self.buffer[: len(preds)])
        instances.pred_classes = torch.tensor([p[0] for p in preds], dtype=torch.int64)
        instances.scores = torch.tensor([p[1] for p in preds], dtype=torch.float32)
        return instances


def run(evaluator, files, predictions, feeder, workdir):
    """(reset + feeding + process seconds, evaluate seconds, results) of one evaluator."""
    start = time.perf_counter()
    evaluator.reset()
    for (image, _), preds in zip(files, predictions):
        inputs = [
            {
                "file_name": image,
                "image_id": os.path.basename(image)[:-16],
                "height": HEIGHT,
                "width": WIDTH,
            }
        ]
        evaluator.process(inputs, [{"instances": feeder(preds)}])
    middle = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(workdir)  # cityscapesscripts writes matches.json into the working directory
    try:
        results = evaluator.evaluate()["segm"]
    finally:
        os.chdir(cwd)
    return middle - start, time.perf_counter() - middle, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--predictions", type=int, default=18, help="per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where to write the data (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_eval_cs_") as tmp:
        root = args.workdir or tmp
        files = write_dataset(root, args.num_images, args.seed)
        predictions = []
        for i, (_, gt_file) in enumerate(files):
            ids = np.asarray(Image.open(gt_file))
            rng = np.random.default_rng([args.seed, i, 1])
            predictions.append(compact(make_predictions(rng, ids, args.predictions)))
            print(f"\rpredictions {i + 1}/{len(files)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        feeder = Feeder(max(len(p) for p in predictions))
        start = time.perf_counter()
        for preds in predictions:
            feeder(preds)
        feeding = time.perf_counter() - start

        name = "bench_cityscapes_val"
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(
            gt_dir=os.path.join(root, "gtFine", "val"), thing_classes=list(CITYSCAPES_THING_CLASSES)
        )
        evaluators = {
            "detectron2": DetectronEvaluator(name),
            "d2_finetune": CityscapesInstanceEvaluator(name),
        }
        timings = {key: run(e, files, predictions, feeder, tmp) for key, e in evaluators.items()}

    num_predictions = sum(len(p) for p in predictions)
    print(
        f"\n{args.num_images} images of {WIDTH}x{HEIGHT}, "
        f"{num_predictions / args.num_images:.1f} predictions per image; "
        f"feeding the predictions alone takes {feeding:.2f} s (included below)"
    )
    print(
        f"{'evaluator':<12} {'reset+process s':>15} {'evaluate s':>11} {'total s':>9} "
        f"{'speed-up':>9} {'AP':>9} {'AP50':>9}"
    )
    reference = sum(timings["detectron2"][:2])
    for key, (process, evaluate, results) in timings.items():
        total = process + evaluate
        print(
            f"{key:<12} {process:>15.2f} {evaluate:>11.2f} {total:>9.2f} "
            f"{reference / total:>8.1f}x {results['AP']:>9.4f} {results['AP50']:>9.4f}"
        )
    diff = max(
        abs(timings["detectron2"][2][k] - t[2][k]) for t in timings.values() for k in ("AP", "AP50")
    )
    print(f"largest AP difference to detectron2: {diff:.2e}")


if __name__ == "__main__":
    main()
