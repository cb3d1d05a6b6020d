"""A synthetic Pascal VOC (VOCdevkit layout: XML annotations, image sets, JPEG images)."""

import os
import xml.etree.ElementTree as ET

import numpy as np

from .drawing import APPEARANCE, paint, polygon_box, render_objects

__all__ = ["VOC_LOOKS", "make_voc"]

# Pascal VOC classes drawn like the COCO class of the same thing (those without one are absent).
VOC_LOOKS = {
    "aeroplane": "airplane",
    "bicycle": "bicycle",
    "bus": "bus",
    "car": "car",
    "dog": "dog",
    "motorbike": "motorcycle",
    "person": "person",
    "train": "train",
}


def _jpeg_box(polygon, width, height):
    """VOC's 1-based inclusive pixel box of a drawn polygon, clipped to the image."""
    x0, y0, x1, y1 = polygon_box(polygon)
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


def make_voc(
    root,
    splits=None,
    year=2007,
    size=(320, 240),
    classes=None,
    seed=0,
    objects_per_image=(1, 4),
    difficult_prob=0.15,
):
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
    from ...data.voc import VOC_CLASSES

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
            placed = render_objects(
                rng,
                size,
                [VOC_LOOKS[c] for c in classes],
                int(rng.integers(lo, hi + 1)),
                allow_overlap=False,
                horizon_frac=0.0,
            )
            look_to_voc = {VOC_LOOKS[c]: c for c in classes}
            background = [[0, 0], [width, 0], [width, height], [0, height]]
            tint = tuple(int(v) for v in rng.integers(60, 140, size=3))
            layers = [(background, tint)] + [(p, APPEARANCE[n][1]) for n, p in placed]
            image = paint(rng, size, layers)
            image.save(os.path.join(base, "JPEGImages", image_id + ".jpg"), quality=95)
            objects = [
                (look_to_voc[n], _jpeg_box(p, width, height), rng.random() < difficult_prob)
                for n, p in placed
            ]
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
