"""Synthetic datasets written in the exact on-disk formats of real ones.

Used by the tests, the demo and the benchmarks, where no real data can be downloaded. Each
object class has its own look (shape, colour, size), the same in every dataset, so a model
trained on one format transfers to another by class name, as COCO models do to Cityscapes.

* :func:`make_cityscapes` -- ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/*_gtFine_{polygons.json,instanceIds.png,labelIds.png,color.png}``,
  the PNGs rasterised by cityscapesscripts' own functions (instance ids saved as 16-bit PNGs).
* :func:`make_coco` -- a COCO instances json (all 80 COCO categories with their real ids) and
  its images.
* :func:`make_voc` -- ``VOCdevkit/VOC<year>/{Annotations/*.xml,ImageSets/Main/*.txt,
  JPEGImages/*.jpg}``.
* :func:`make_kitti` -- ``kitti/training/{image_2/*.png,label_2/*.txt}`` with all 15 label
  fields (truncation, occlusion and the 3D box consistent with the drawn 2D box) and
  ``DontCare`` regions holding unlabelled far objects.

Classes of other datasets are drawn with the look of the COCO class they correspond to
(:data:`VOC_LOOKS`, :data:`KITTI_LOOKS`).
"""
import json
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "APPEARANCE",
    "KITTI_LOOKS",
    "VOC_LOOKS",
    "make_cityscapes",
    "make_cityscapes_parallel",
    "make_coco",
    "make_kitti",
    "make_voc",
    "render_objects",
    "write_uint16_png",
]

# name: (shape, RGB colour, height range as a fraction of the image height, width / height)
APPEARANCE = {
    "person": ("ellipse", (200, 40, 40), (0.22, 0.42), 0.42),
    "rider": ("pentagon", (235, 130, 30), (0.22, 0.40), 0.65),
    "car": ("rect", (40, 70, 210), (0.14, 0.24), 2.0),
    "truck": ("lshape", (20, 150, 150), (0.20, 0.32), 1.7),
    "bus": ("rect", (225, 205, 40), (0.20, 0.30), 2.8),
    "train": ("rect", (40, 165, 60), (0.14, 0.20), 4.5),
    "motorcycle": ("diamond", (150, 50, 205), (0.14, 0.24), 1.3),
    "bicycle": ("triangle", (70, 205, 235), (0.16, 0.26), 1.3),
    "dog": ("pentagon", (130, 80, 40), (0.14, 0.22), 1.4),
    "stop sign": ("octagon", (200, 0, 110), (0.12, 0.20), 1.0),
    "airplane": ("cross", (235, 235, 235), (0.16, 0.26), 1.6),
}

# Pascal VOC classes drawn like the COCO class of the same thing (those without one are absent).
VOC_LOOKS = {
    "aeroplane": "airplane", "bicycle": "bicycle", "bus": "bus", "car": "car", "dog": "dog",
    "motorbike": "motorcycle", "person": "person", "train": "train",
}

# KITTI types drawn like the nearest COCO / Cityscapes class.
KITTI_LOOKS = {
    "Car": "car", "Van": "car", "Truck": "truck", "Pedestrian": "person",
    "Person_sitting": "person", "Cyclist": "rider", "Tram": "train", "Misc": "stop sign",
}

# Cityscapes "stuff" drawn behind the objects: label name and image colour.
_STUFF = [("sky", (110, 150, 200)), ("building", (95, 90, 85)), ("road", (75, 70, 80))]
_CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"], "test": ["berlin"]}


def _shape_polygon(shape, cx, cy, w, h):
    """Integer polygon of ``shape`` centred at (cx, cy) with size w x h."""
    x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    if shape == "ellipse":
        pts = [
            (cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 18, endpoint=False)
        ]
    elif shape == "rect":
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif shape == "lshape":
        pts = [(x0, y0 + h * 0.35), (cx + w * 0.15, y0 + h * 0.35), (cx + w * 0.15, y0),
               (x1, y0), (x1, y1), (x0, y1)]
    elif shape == "diamond":
        pts = [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    elif shape == "triangle":
        pts = [(cx, y0), (x1, y1), (x0, y1)]
    elif shape == "pentagon":
        pts = [(cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
               for t in np.linspace(-math.pi / 2, 1.5 * math.pi, 5, endpoint=False)]
    elif shape == "octagon":
        pts = [(cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
               for t in np.linspace(math.pi / 8, 2.125 * math.pi, 8, endpoint=False)]
    elif shape == "cross":
        a, b = w * 0.18, h * 0.2
        pts = [(x0, cy - b), (cx - a, cy - b), (cx - a, y0), (cx + a, y0), (cx + a, cy - b),
               (x1, cy - b), (x1, cy + b), (cx + a, cy + b), (cx + a, y1), (cx - a, y1),
               (cx - a, cy + b), (x0, cy + b)]
    else:
        raise ValueError(f"unknown shape {shape}")
    return [[int(round(x)), int(round(y))] for x, y in pts]


def _sample_object(rng, name, width, height, horizon):
    shape, _, (hmin, hmax), aspect = APPEARANCE[name]
    h = rng.uniform(hmin, hmax) * height
    w = min(h * aspect * rng.uniform(0.85, 1.15), width * 0.6)
    cx = rng.uniform(w / 2, width - w / 2)
    cy = rng.uniform(max(horizon, h / 2), height - h / 2)
    return _shape_polygon(shape, cx, cy, w, h)


def _box(polygon):
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    return min(xs), min(ys), max(xs), max(ys)


def _overlap(a, b):
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def render_objects(rng, size, class_names, num_objects, allow_overlap, horizon_frac=0.35):
    """Lay out ``num_objects`` objects; returns [(class name, polygon)] in drawing order."""
    width, height = size
    horizon = height * horizon_frac
    placed = []
    for _ in range(num_objects):
        name = class_names[rng.integers(len(class_names))]
        for _attempt in range(30):
            poly = _sample_object(rng, name, width, height, horizon)
            box = _box(poly)
            if allow_overlap or not any(_overlap(box, _box(p)) for _, p in placed):
                placed.append((name, poly))
                break
    return placed


def _paint(rng, size, layers):
    """An RGB image: each (polygon, colour) painted in order, with per-object colour jitter
    and sensor-like noise."""
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for polygon, colour in layers:
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
        draw.polygon([tuple(p) for p in polygon], fill=fill)
    arr = np.asarray(image).astype(np.int16)
    arr = arr + rng.normal(0, 6, size=arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_uint16_png(path, array):
    """Save an integer array as a 16-bit PNG (Pillow cannot write mode "I" PNGs)."""
    array = np.asarray(array)
    if array.min() < 0 or array.max() > 65535:
        raise ValueError(f"values out of the uint16 range for {path}")
    Image.fromarray(array.astype(np.uint16)).save(path)


def _stuff_polygons(rng, width, height):
    horizon = int(height * rng.uniform(0.3, 0.4))
    roofline = int(height * rng.uniform(0.1, 0.2))
    return [
        ("sky", [[0, 0], [width, 0], [width, roofline], [0, roofline]]),
        ("building", [[0, roofline], [width, roofline], [width, horizon], [0, horizon]]),
        ("road", [[0, horizon], [width, horizon], [width, height], [0, height]]),
    ]


def make_cityscapes(root, splits=None, size=(512, 256), classes=None, seed=0,
                    objects_per_image=(3, 7), group_prob=0.25, cities=None):
    """Write a synthetic Cityscapes (gtFine) dataset under ``<root>/cityscapes``.

    Args:
        root: the folder that will hold ``cityscapes/``.
        splits: {split: number of images}, default {"train": 8, "val": 4}.
        size: (width, height) of every image.
        classes: object classes to draw (Cityscapes thing classes by default).
        objects_per_image: inclusive range of instance objects per image.
        group_prob: chance that an image also holds a ``<class>group`` (crowd) region.
        cities: city folder names to spread the images over (default: real Cityscapes names).

    Returns:
        dict: split -> list of image paths.
    """
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    from .cityscapes import CITYSCAPES_THING_CLASSES

    splits = splits or {"train": 8, "val": 4}
    classes = list(classes or CITYSCAPES_THING_CLASSES)
    stuff_colour = dict(_STUFF)
    rng = np.random.default_rng(seed)
    width, height = size
    written = {}
    for split, count in splits.items():
        split_cities = cities or _CITIES.get(split, [split])
        written[split] = []
        for i in range(count):
            city = split_cities[i % len(split_cities)]
            stem = f"{city}_{i:06d}_000019"
            img_dir = os.path.join(root, "cityscapes", "leftImg8bit", split, city)
            gt_dir = os.path.join(root, "cityscapes", "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)

            objects = [{"label": n, "polygon": p} for n, p in _stuff_polygons(rng, width, height)]
            layers = [(o["polygon"], stuff_colour[o["label"]]) for o in objects]
            if rng.random() < group_prob:
                name = classes[rng.integers(len(classes))]
                poly = _sample_object(rng, name, width, height, height * 0.35)
                objects.append({"label": name + "group", "polygon": poly})
                layers.append((poly, APPEARANCE[name][1]))
            lo, hi = objects_per_image
            for name, poly in render_objects(rng, size, classes, int(rng.integers(lo, hi + 1)),
                                             allow_overlap=True):
                objects.append({"label": name, "polygon": poly})
                layers.append((poly, APPEARANCE[name][1]))
                if name == "car" and rng.random() < 0.5:  # label id -1: never drawn
                    x0, y0, x1, y1 = _box(poly)
                    cx, cy = (x0 + x1) // 2, y1 - max(2, (y1 - y0) // 6)
                    plate = [[cx - 4, cy - 2], [cx + 4, cy - 2], [cx + 4, cy + 2], [cx - 4, cy + 2]]
                    objects.append({"label": "license plate", "polygon": plate})
            image = _paint(rng, size, layers)
            image_path = os.path.join(img_dir, stem + "_leftImg8bit.png")
            image.save(image_path)

            json_path = os.path.join(gt_dir, stem + "_gtFine_polygons.json")
            with open(json_path, "w") as f:
                json.dump({"imgHeight": height, "imgWidth": width, "objects": objects}, f)
            annotation = Annotation()
            annotation.fromJsonFile(json_path)
            write_uint16_png(
                os.path.join(gt_dir, stem + "_gtFine_instanceIds.png"),
                np.asarray(createInstanceImage(annotation, "ids")),
            )
            createLabelImage(annotation, "ids").save(os.path.join(gt_dir, stem + "_gtFine_labelIds.png"))
            createLabelImage(annotation, "color").save(os.path.join(gt_dir, stem + "_gtFine_color.png"))
            written[split].append(image_path)
    return written


def _cityscapes_chunk(kwargs):
    return make_cityscapes(**kwargs)


def make_cityscapes_parallel(root, split, count, size=(2048, 1024), seed=0, processes=None,
                             objects_per_image=(16, 20)):
    """``make_cityscapes`` for one split with several processes: each writes its share of the
    images into its own city folder (``<split>NN``)."""
    import multiprocessing as mp

    processes = max(1, min(processes or os.cpu_count() or 1, count))
    share = -(-count // processes)
    jobs = [
        dict(root=root, splits={split: min(share, count - k * share)}, size=size, seed=seed + k,
             objects_per_image=objects_per_image, cities=[f"{split}{k:02d}"])
        for k in range(processes) if count - k * share > 0
    ]
    with mp.Pool(len(jobs)) as pool:
        pool.map(_cityscapes_chunk, jobs)


def make_coco(out_dir, num_images=16, size=(512, 256), classes=None, seed=0,
              objects_per_image=(3, 6), image_ext="jpg"):
    """Write a synthetic COCO-format dataset: ``<out_dir>/images/`` and ``<out_dir>/annotations.json``.

    The json lists all 80 COCO categories with their real (non-contiguous) ids, so a model
    trained on it has COCO's head shapes. Objects do not overlap, so polygons are exact.

    Returns:
        (json path, image folder)
    """
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"}
        for c in COCO_CATEGORIES if c["isthing"]
    ]
    name_to_id = {c["name"]: c["id"] for c in categories}
    classes = list(classes or ["person", "car", "truck", "bus", "train", "motorcycle",
                               "bicycle", "dog", "stop sign", "airplane"])
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
        placed = render_objects(rng, size, classes, int(rng.integers(lo, hi + 1)),
                                allow_overlap=False, horizon_frac=0.0)
        layers = [(p, APPEARANCE[n][1]) for n, p in placed]
        background = [[0, 0], [width, 0], [width, height], [0, height]]
        tint = tuple(int(v) for v in rng.integers(60, 140, size=3))
        image = _paint(rng, size, [(background, tint)] + layers)
        file_name = f"{i:012d}.{image_ext}"
        image.save(os.path.join(image_dir, file_name))
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for name, poly in placed:
            x0, y0, x1, y1 = _box(poly)
            flat = [float(v) for p in poly for v in p]
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": name_to_id[name],
                "segmentation": [flat],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(_polygon_area(poly)),
                "iscrowd": 0,
            })
    json_path = os.path.join(out_dir, "annotations.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path, image_dir


def _polygon_area(poly):
    xs = np.array([p[0] for p in poly], dtype=float)
    ys = np.array([p[1] for p in poly], dtype=float)
    return 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))


def _jpeg_box(polygon, width, height):
    """VOC's 1-based inclusive pixel box of a drawn polygon, clipped to the image."""
    x0, y0, x1, y1 = _box(polygon)
    return (max(1, x0 + 1), max(1, y0 + 1), min(width, x1 + 1), min(height, y1 + 1))


def _voc_xml(folder, file_name, size, objects):
    width, height = size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = file_name
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = f"The {folder} Database"
    ET.SubElement(source, "annotation").text = f"PASCAL {folder}"
    ET.SubElement(source, "image").text = "synthetic"
    size_node = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size_node, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, box, difficult in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            bndbox.append(ET.Element(key))
            bndbox[-1].text = str(int(value))
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def make_voc(root, splits=None, year=2007, size=(320, 240), classes=None, seed=0,
             objects_per_image=(1, 4), difficult_prob=0.15):
    """Write a synthetic Pascal VOC year under ``<root>/VOCdevkit/VOC<year>/``.

    ``Annotations/<id>.xml`` (1-based inclusive boxes, ``difficult`` flags),
    ``JPEGImages/<id>.jpg`` and ``ImageSets/Main/<split>.txt`` plus the per-class
    ``<class>_<split>.txt`` files (1 present, 0 only difficult, -1 absent). A ``trainval``
    split is also written as ``train`` (its first half) and ``val``.

    Args:
        splits: {image set: number of images}, default {"trainval": 6, "test": 4}.
        classes: VOC class names to draw, default those with a look (:data:`VOC_LOOKS`).

    Returns:
        dict: image set -> list of image ids.
    """
    from .voc import VOC_CLASSES

    splits = splits or {"trainval": 6, "test": 4}
    classes = list(classes or VOC_LOOKS)
    unknown = [c for c in classes if c not in VOC_LOOKS]
    if unknown:
        raise ValueError(f"no look for VOC classes {unknown}; drawable: {list(VOC_LOOKS)}")
    folder = f"VOC{year}"
    base = os.path.join(root, "VOCdevkit", folder)
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    written, present, counter = {}, {}, 0
    for split, count in splits.items():
        written[split] = []
        for _ in range(count):
            counter += 1
            image_id = f"{counter:06d}" if year == 2007 else f"{year}_{counter:06d}"
            lo, hi = objects_per_image
            placed = render_objects(rng, size, [VOC_LOOKS[c] for c in classes],
                                    int(rng.integers(lo, hi + 1)), allow_overlap=False,
                                    horizon_frac=0.0)
            look_to_voc = {VOC_LOOKS[c]: c for c in classes}
            background = [[0, 0], [width, 0], [width, height], [0, height]]
            tint = tuple(int(v) for v in rng.integers(60, 140, size=3))
            layers = [(background, tint)] + [(p, APPEARANCE[n][1]) for n, p in placed]
            image = _paint(rng, size, layers)
            image.save(os.path.join(base, "JPEGImages", image_id + ".jpg"), quality=95)
            objects = [(look_to_voc[n], _jpeg_box(p, width, height), rng.random() < difficult_prob)
                       for n, p in placed]
            with open(os.path.join(base, "Annotations", image_id + ".xml"), "w") as f:
                f.write(_voc_xml(folder, image_id + ".jpg", size, objects))
            flags = {}
            for name, _, difficult in objects:
                flags[name] = max(flags.get(name, 0), 0 if difficult else 1)
            present[image_id] = flags
            written[split].append(image_id)
    image_sets = dict(written)
    if "trainval" in written:
        half = (len(written["trainval"]) + 1) // 2
        image_sets["train"] = written["trainval"][:half]
        image_sets["val"] = written["trainval"][half:]
    for split, ids in image_sets.items():
        main = os.path.join(base, "ImageSets", "Main")
        with open(os.path.join(main, split + ".txt"), "w") as f:
            f.writelines(i + "\n" for i in ids)
        for name in VOC_CLASSES:
            with open(os.path.join(main, f"{name}_{split}.txt"), "w") as f:
                f.writelines(f"{i} {present[i].get(name, -1):2d}\n" for i in ids)
    return written


# KITTI: type -> (sampling weight, 3D size h, w, l in metres), roughly the dataset's averages.
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
    stuff = _stuff_polygons(rng, width, height)
    horizon = stuff[-1][1][0][1]
    layers = [(p, dict(_STUFF)[n]) for n, p in stuff]
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
        polygon = _shape_polygon(shape, cx, cy, w, h)
        polygons.append(polygon)
        layers.append((polygon, APPEARANCE[KITTI_LOOKS[kind]][1]))
        drawer.polygon([tuple(p) for p in polygon], fill=index)
    ids = np.asarray(canvas)
    lines = []
    for index, ((z, kind, _, cx, cy, w, h, dims), polygon) in enumerate(zip(objects, polygons), 1):
        alone = Image.new("L", size, 0)
        ImageDraw.Draw(alone).polygon([tuple(p) for p in polygon], fill=1)
        own = int(np.asarray(alone).sum())
        visible = int((ids == index).sum())
        if visible == 0:
            continue
        seen = visible / own
        occluded = 0 if seen >= 0.9 else 1 if seen >= 0.5 else 2
        x0, y0, x1, y1 = _box(polygon)
        box = (max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1))
        full = (x1 - x0) * (y1 - y0)
        truncated = 1 - (box[2] - box[0]) * (box[3] - box[1]) / full if full > 0 else 0.0
        x = (cx - width / 2) * z / focal
        y = (cy + h / 2 - height * 0.46) * z / focal
        rotation_y = float(rng.uniform(-math.pi, math.pi))
        alpha = _wrap_angle(rotation_y - math.atan2(x, z))
        lines.append(_kitti_line(kind, max(truncated, 0.0), occluded, alpha, box, dims,
                                 (x, y, z), rotation_y))
    if rng.random() < 0.5:
        w, h = width * rng.uniform(0.06, 0.15), height * rng.uniform(0.05, 0.09)
        x0 = rng.uniform(0, width - w)
        y0 = min(max(0.0, horizon - h / 2), height - h)
        for _ in range(int(rng.integers(1, 4))):
            fw, fh = w * rng.uniform(0.2, 0.35), h * rng.uniform(0.35, 0.6)
            fx = rng.uniform(x0 + fw / 2, x0 + w - fw / 2)
            fy = rng.uniform(y0 + fh / 2, y0 + h - fh / 2)
            layers.append((_shape_polygon("rect", fx, fy, fw, fh), APPEARANCE["car"][1]))
        lines.append("DontCare -1 -1 -10 %.2f %.2f %.2f %.2f -1 -1 -1 -1000 -1000 -1000 -10"
                     % (x0, y0, x0 + w, y0 + h))
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
        _paint(rng, size, layers).save(path)
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
            _paint(rng, size, layers).save(path)
            written["test"].append(path)
    return written
