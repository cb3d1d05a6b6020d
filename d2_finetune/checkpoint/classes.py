"""Class names: which class of a checkpoint a class of the model starts from.

Names are compared after :func:`normalize_class_name`; where no class has the same name, a
synonym table maps a model class to a checkpoint class. The checkpointer knows no dataset: the
synonyms come from the training dataset's metadata (``class_synonyms``, set by its registration,
e.g. Pascal VOC's ``aeroplane`` -> COCO's ``airplane``).
"""

from collections.abc import Mapping

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from ..errors import ConfigError

__all__ = [
    "check_class_count",
    "check_class_map",
    "coco_thing_classes",
    "match_classes",
    "normalize_class_name",
]


def normalize_class_name(name):
    """Lower case, ``_`` read as a space, surrounding and repeated spaces dropped."""
    return " ".join(str(name).replace("_", " ").lower().split())


def coco_thing_classes():
    """COCO's 80 thing class names in category-id order: the order of a COCO model's head."""
    things = sorted((c for c in COCO_CATEGORIES if c["isthing"]), key=lambda c: c["id"])
    return [c["name"] for c in things]


def _canonical(name, synonyms):
    name = normalize_class_name(name)
    return normalize_class_name(synonyms.get(name, name))


def match_classes(target_classes, source_classes, class_map="auto", synonyms=None):
    """For each target class, the index of the source class it starts from, or None.

    Args:
        target_classes (list[str]): the model's classes, in head order.
        source_classes (list[str]): the checkpoint's classes, in head order.
        class_map: ``"auto"`` matches names: the source class of the same (normalised) name,
            else one that ``synonyms`` makes the same. A dict ``{target: source}`` overrides the
            automatic match for the classes it names (a ``None`` source keeps a class fresh);
            the other classes are matched automatically. ``None``: no class.
        synonyms (dict): ``{name: the name it stands for}`` (e.g. ``{"aeroplane": "airplane"}``),
            applied to the names of both sides.

    Returns:
        list[int or None]: one entry per target class.
    """
    if class_map is None:
        return [None] * len(target_classes)
    synonyms = {normalize_class_name(k): v for k, v in (synonyms or {}).items()}
    norm_source = [normalize_class_name(s) for s in source_classes]
    canon_source = [_canonical(s, synonyms) for s in source_classes]
    result = []
    for name in target_classes:
        norm = normalize_class_name(name)
        if norm in norm_source:
            result.append(norm_source.index(norm))
        elif _canonical(name, synonyms) in canon_source:
            result.append(canon_source.index(_canonical(name, synonyms)))
        else:
            result.append(None)
    if isinstance(class_map, Mapping):
        norm_target = [normalize_class_name(t) for t in target_classes]
        bad_targets = [t for t in class_map if normalize_class_name(t) not in norm_target]
        bad_sources = [
            s
            for s in class_map.values()
            if s is not None and normalize_class_name(s) not in norm_source
        ]
        if bad_targets or bad_sources:
            problems = []
            if bad_targets:
                problems.append(
                    f"{bad_targets} are not classes of the model {list(target_classes)}"
                )
            if bad_sources:
                problems.append(
                    f"{bad_sources} are not classes of the checkpoint {list(source_classes)}"
                )
            raise ConfigError(
                f"train.class_map={dict(class_map)}: "
                + "; ".join(problems)
                + ". Map {target class: checkpoint class}, names as in those lists."
            )
        for target, source in class_map.items():
            index = norm_target.index(normalize_class_name(target))
            if source is not None:
                source = norm_source.index(normalize_class_name(source))
            result[index] = source
    return result


def check_class_map(class_map):
    """``train.class_map`` as the checkpointer takes it: "auto", None or a dict."""
    if class_map is None or (isinstance(class_map, str) and class_map.lower() == "none"):
        return None
    if class_map == "auto":
        return class_map
    if isinstance(class_map, Mapping):
        if all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in class_map.items()
        ):
            return dict(class_map)
    raise ConfigError(
        f"train.class_map must be 'auto', None or a dict {{target class: checkpoint class}}, "
        f"got {class_map!r}."
    )


def check_class_count(classes, num_classes, key, dataset=None):
    """The model predicts as many classes as the training data has; otherwise a ConfigError
    naming the key to set. The one rule, wherever a model meets its data's classes."""
    if len(classes) != num_classes:
        data = f"The training data ({dataset})" if dataset else "The training data"
        raise ConfigError(
            f"{data} has {len(classes)} classes {list(classes)} but the model predicts "
            f"{num_classes}: set {key}={len(classes)}."
        )
