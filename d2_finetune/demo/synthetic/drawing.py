"""Drawing synthetic scenes: each object class has its own look (shape, colour, size), the same in
every dataset, so a model trained on one format transfers to another by class name."""

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "APPEARANCE",
    "STUFF",
    "paint",
    "polygon_box",
    "render_objects",
    "sample_object",
    "shape_polygon",
    "stuff_polygons",
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

# Cityscapes "stuff" drawn behind the objects: label name and image colour.
STUFF = [("sky", (110, 150, 200)), ("building", (95, 90, 85)), ("road", (75, 70, 80))]


def shape_polygon(shape, cx, cy, w, h):
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
        pts = [
            (x0, y0 + h * 0.35),
            (cx + w * 0.15, y0 + h * 0.35),
            (cx + w * 0.15, y0),
            (x1, y0),
            (x1, y1),
            (x0, y1),
        ]
    elif shape == "diamond":
        pts = [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    elif shape == "triangle":
        pts = [(cx, y0), (x1, y1), (x0, y1)]
    elif shape == "pentagon":
        pts = [
            (cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
            for t in np.linspace(-math.pi / 2, 1.5 * math.pi, 5, endpoint=False)
        ]
    elif shape == "octagon":
        pts = [
            (cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
            for t in np.linspace(math.pi / 8, 2.125 * math.pi, 8, endpoint=False)
        ]
    elif shape == "cross":
        a, b = w * 0.18, h * 0.2
        pts = [
            (x0, cy - b),
            (cx - a, cy - b),
            (cx - a, y0),
            (cx + a, y0),
            (cx + a, cy - b),
            (x1, cy - b),
            (x1, cy + b),
            (cx + a, cy + b),
            (cx + a, y1),
            (cx - a, y1),
            (cx - a, cy + b),
            (x0, cy + b),
        ]
    else:
        raise ValueError(f"unknown shape {shape}")
    return [[int(round(x)), int(round(y))] for x, y in pts]


def sample_object(rng, name, width, height, horizon):
    shape, _, (hmin, hmax), aspect = APPEARANCE[name]
    h = rng.uniform(hmin, hmax) * height
    w = min(h * aspect * rng.uniform(0.85, 1.15), width * 0.6)
    cx = rng.uniform(w / 2, width - w / 2)
    cy = rng.uniform(max(horizon, h / 2), height - h / 2)
    return shape_polygon(shape, cx, cy, w, h)


def polygon_box(polygon):
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
            poly = sample_object(rng, name, width, height, horizon)
            box = polygon_box(poly)
            if allow_overlap or not any(_overlap(box, polygon_box(p)) for _, p in placed):
                placed.append((name, poly))
                break
    return placed


def paint(rng, size, layers):
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


def stuff_polygons(rng, width, height):
    horizon = int(height * rng.uniform(0.3, 0.4))
    roofline = int(height * rng.uniform(0.1, 0.2))
    return [
        ("sky", [[0, 0], [width, 0], [width, roofline], [0, roofline]]),
        ("building", [[0, roofline], [width, roofline], [width, horizon], [0, horizon]]),
        ("road", [[0, horizon], [width, horizon], [width, height], [0, height]]),
    ]
