"""A synthetic KITTI 2D object set: images and labels with all 15 fields, consistent in 3D."""

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from .drawing import APPEARANCE, STUFF, paint, polygon_box, shape_polygon, stuff_polygons

__all__ = ["KITTI_LOOKS", "make_kitti"]

# KITTI types drawn like the nearest COCO / Cityscapes class.
KITTI_LOOKS = {
    "Car": "car",
    "Van": "car",
    "Truck": "truck",
    "Pedestrian": "person",
    "Person_sitting": "person",
    "Cyclist": "rider",
    "Tram": "train",
    "Misc": "stop sign",
}

_KITTI_OBJECTS = {
    "Car": (0.48, (1.53, 1.63, 3.88)),
    "Van": (0.08, (2.21, 1.90, 5.08)),
    "Truck": (0.05, (3.25, 2.59, 10.11)),
    "Pedestrian": (0.17, (1.76, 0.66, 0.84)),
    "Person_sitting": (0.04, (1.27, 0.54, 0.80)),
    "Cyclist": (0.1, (1.74, 0.60, 1.76)),
    "Tram": (0.04, (3.53, 2.54, 16.09)),
    "Misc": (0.04, (1.91, 1.51, 3.58)),
}
_KITTI_FOCAL = 721.5377  # pixels, at KITTI's 1242-pixel image width


def _wrap_angle(angle):
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _kitti_line(kind, truncated, occluded, alpha, box, dims, location, rotation_y):
    values = [truncated, occluded, alpha, *box, *dims, *location, rotation_y]
    text = ["%d" % v if i == 1 else "%.2f" % v for i, v in enumerate(values)]
    return kind + " " + " ".join(text)


def _kitti_frame(rng, size):
    """(painted layers, label lines) of one synthetic KITTI frame."""
    width, height = size
    focal = _KITTI_FOCAL * width / 1242
    stuff = stuff_polygons(rng, width, height)
    horizon = stuff[-1][1][0][1]
    layers = [(p, dict(STUFF)[n]) for n, p in stuff]
    kinds = list(_KITTI_OBJECTS)
    weights = np.array([_KITTI_OBJECTS[k][0] for k in kinds])
    objects = []
    for _ in range(int(rng.integers(2, 7))):
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        shape, _, (hmin, hmax), aspect = APPEARANCE[KITTI_LOOKS[kind]]
        h = min(rng.uniform(hmin, hmax) * rng.uniform(0.4, 1.5) * height, height - horizon)
        w = h * aspect * rng.uniform(0.85, 1.15)
        bottom = rng.uniform(max(horizon + h * 0.3, h), height)
        cx = rng.uniform(-0.3 * w, width + 0.3 * w)
        dims = _KITTI_OBJECTS[kind][1]
        z = focal * dims[0] / h
        objects.append((z, kind, shape, cx, bottom - h / 2, w, h, dims))
    objects.sort(key=lambda o: -o[0])  # far first: nearer objects cover farther ones
    canvas = Image.new("I", size, 0)
    drawer = ImageDraw.Draw(canvas)
    polygons = []
    for index, (_, kind, shape, cx, cy, w, h, _) in enumerate(objects, start=1):
        polygon = shape_polygon(shape, cx, cy, w, h)
        polygons.append(polygon)
        layers.append((polygon, APPEARANCE[KITTI_LOOKS[kind]][1]))
        drawer.polygon([tuple(p) for p in polygon], fill=index)
    ids = np.asarray(canvas)
    lines = []
    for index, ((z, kind, _, cx, cy, _w, h, dims), polygon) in enumerate(zip(objects, polygons), 1):
        alone = Image.new("L", size, 0)
        ImageDraw.Draw(alone).polygon([tuple(p) for p in polygon], fill=1)
        own = int(np.asarray(alone).sum())
        visible = int((ids == index).sum())
        if visible == 0:
            continue
        seen = visible / own
        occluded = 0 if seen >= 0.9 else 1 if seen >= 0.5 else 2
        x0, y0, x1, y1 = polygon_box(polygon)
        box = (max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1))
        full = (x1 - x0) * (y1 - y0)
        truncated = 1 - (box[2] - box[0]) * (box[3] - box[1]) / full if full > 0 else 0.0
        x = (cx - width / 2) * z / focal
        y = (cy + h / 2 - height * 0.46) * z / focal
        rotation_y = float(rng.uniform(-math.pi, math.pi))
        alpha = _wrap_angle(rotation_y - math.atan2(x, z))
        lines.append(
            _kitti_line(
                kind, max(truncated, 0.0), occluded, alpha, box, dims, (x, y, z), rotation_y
            )
        )
    if rng.random() < 0.5:
        w, h = width * rng.uniform(0.06, 0.15), height * rng.uniform(0.05, 0.09)
        x0 = rng.uniform(0, width - w)
        y0 = min(max(0.0, horizon - h / 2), height - h)
        for _ in range(int(rng.integers(1, 4))):
            fw, fh = w * rng.uniform(0.2, 0.35), h * rng.uniform(0.35, 0.6)
            fx = rng.uniform(x0 + fw / 2, x0 + w - fw / 2)
            fy = rng.uniform(y0 + fh / 2, y0 + h - fh / 2)
            layers.append((shape_polygon("rect", fx, fy, fw, fh), APPEARANCE["car"][1]))
        lines.append(
            "DontCare -1 -1 -10 %.2f %.2f %.2f %.2f -1 -1 -1 -1000 -1000 -1000 -10"
            % (x0, y0, x0 + w, y0 + h)
        )
    return layers, lines


def make_kitti(root, num_images=8, size=(1242, 375), seed=0, num_test=0):
    """Write a synthetic KITTI 2D object dataset under ``<root>/kitti``.

    ``training/image_2/<id>.png`` with ``training/label_2/<id>.txt`` (15 fields a line), and
    ``testing/image_2/`` with ``num_test`` unlabelled images. Objects stand on a road plane;
    their 3D size is the class average, their distance follows from the drawn height with
    KITTI's focal length, ``truncated`` is the share of the box outside the image and
    ``occluded`` (0, 1, 2) comes from the share covered by nearer objects. Half the frames have a
    ``DontCare`` region holding unlabelled far cars.

    Returns:
        dict: "train" (and "test") -> list of image paths.
    """
    rng = np.random.default_rng(seed)
    written = {"train": []}
    image_dir = os.path.join(root, "kitti", "training", "image_2")
    label_dir = os.path.join(root, "kitti", "training", "label_2")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for i in range(num_images):
        layers, lines = _kitti_frame(rng, size)
        path = os.path.join(image_dir, f"{i:06d}.png")
        paint(rng, size, layers).save(path)
        with open(os.path.join(label_dir, f"{i:06d}.txt"), "w") as f:
            f.writelines(line + "\n" for line in lines)
        written["train"].append(path)
    if num_test:
        test_dir = os.path.join(root, "kitti", "testing", "image_2")
        os.makedirs(test_dir, exist_ok=True)
        written["test"] = []
        for i in range(num_test):
            layers, _ = _kitti_frame(rng, size)
            path = os.path.join(test_dir, f"{i:06d}.png")
            paint(rng, size, layers).save(path)
            written["test"].append(path)
    return written
