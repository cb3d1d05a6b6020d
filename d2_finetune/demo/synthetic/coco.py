"""A synthetic COCO-format dataset whose categories carry COCO's 80 names and ids."""

import json
import os

import numpy as np

from .drawing import APPEARANCE, paint, polygon_box, render_objects

__all__ = ["make_coco", "polygon_area"]


def make_coco(
    out_dir,
    num_images=16,
    size=(512, 256),
    classes=None,
    seed=0,
    objects_per_image=(3, 6),
    image_ext="jpg",
):
    """Write a synthetic COCO-format dataset: ``<out_dir>/images/`` and
    ``<out_dir>/annotations.json``.

    The json lists all 80 COCO categories with their real (non-contiguous) ids, so a model
    trained on it has COCO's head shapes. Objects do not overlap, so polygons are exact.

    Returns:
        (json path, image folder)
    """
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"}
        for c in COCO_CATEGORIES
        if c["isthing"]
    ]
    name_to_id = {c["name"]: c["id"] for c in categories}
    classes = list(
        classes
        or [
            "person",
            "car",
            "truck",
            "bus",
            "train",
            "motorcycle",
            "bicycle",
            "dog",
            "stop sign",
            "airplane",
        ]
    )
    missing = [c for c in classes if c not in name_to_id]
    if missing:
        raise ValueError(f"not COCO category names: {missing}")
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    width, height = size
    images, annotations = [], []
    for i in range(num_images):
        lo, hi = objects_per_image
        placed = render_objects(
            rng, size, classes, int(rng.integers(lo, hi + 1)), allow_overlap=False, horizon_frac=0.0
        )
        layers = [(p, APPEARANCE[n][1]) for n, p in placed]
        background = [[0, 0], [width, 0], [width, height], [0, height]]
        tint = tuple(int(v) for v in rng.integers(60, 140, size=3))
        image = paint(rng, size, [(background, tint)] + layers)
        file_name = f"{i:012d}.{image_ext}"
        image.save(os.path.join(image_dir, file_name))
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for name, poly in placed:
            x0, y0, x1, y1 = polygon_box(poly)
            flat = [float(v) for p in poly for v in p]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": name_to_id[name],
                    "segmentation": [flat],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float(polygon_area(poly)),
                    "iscrowd": 0,
                }
            )
    json_path = os.path.join(out_dir, "annotations.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path, image_dir


def polygon_area(poly):
    xs = np.array([p[0] for p in poly], dtype=float)
    ys = np.array([p[1] for p in poly], dtype=float)
    return 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
