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
    "check_class_init",
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


def match_classes(target_classes, source_classes, class_map="auto", synonyms=None, class_init=None):
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
        class_init (dict): ``{target: source}`` for classes the checkpoint has no counterpart
            of (``train.class_init``, e.g. Cityscapes' rider from COCO's person); naming a
            class that already has a source is an error.

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
        for index, source in _named(class_map, "train.class_map", target_classes, source_classes):
            result[index] = source
    for index, source in _named(
        class_init or {}, "train.class_init", target_classes, source_classes
    ):
        if result[index] is not None:
            raise ConfigError(
                f"train.class_init={dict(class_init)}: {target_classes[index]} already starts "
                f"from the checkpoint's {source_classes[result[index]]}; class_init is for classes "
                "the checkpoint has no counterpart of (train.class_map changes a match)."
            )
        result[index] = source
    return result


def _named(mapping, key, target_classes, source_classes):
    """(target index, source index or None) for each entry of ``mapping`` ``{target: source}``;
    names that are not classes of the model or of the checkpoint are a ConfigError."""
    norm_target = [normalize_class_name(t) for t in target_classes]
    norm_source = [normalize_class_name(s) for s in source_classes]
    bad_targets = [t for t in mapping if normalize_class_name(t) not in norm_target]
    bad_sources = [
        s for s in mapping.values() if s is not None and normalize_class_name(s) not in norm_source
    ]
    if bad_targets or bad_sources:
        problems = []
        if bad_targets:
            problems.append(f"{bad_targets} are not classes of the model {list(target_classes)}")
        if bad_sources:
            problems.append(
                f"{bad_sources} are not classes of the checkpoint {list(source_classes)}"
            )
        raise ConfigError(
            f"{key}={dict(mapping)}: "
            + "; ".join(problems)
            + ". Map {target class: checkpoint class}, names as in those lists."
        )
    return [
        (
            norm_target.index(normalize_class_name(target)),
            None if source is None else norm_source.index(normalize_class_name(source)),
        )
        for target, source in mapping.items()
    ]


def check_class_map(class_map):
    """``train.class_map`` as the checkpointer takes it: "auto", None or a dict."""
    if class_map is None or (isinstance(class_map, str) and class_map.lower() == "none"):
        return None
    if class_map == "auto":
        return class_map
    if _is_name_map(class_map, allow_none=True):
        return dict(class_map)
    raise ConfigError(
        f"train.class_map must be 'auto', None or a dict {{target class: checkpoint class}}, "
        f"got {class_map!r}."
    )


def check_class_init(class_init):
    """``train.class_init`` as the checkpointer takes it: None or ``{new class: source class}``."""
    if class_init is None or (isinstance(class_init, Mapping) and not class_init):
        return None
    if _is_name_map(class_init, allow_none=False):
        return dict(class_init)
    raise ConfigError(
        f"train.class_init must be a dict {{new class: checkpoint class}}, e.g. {{rider: person}}, "
        f"got {class_init!r}."
    )


def _is_name_map(value, allow_none):
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and (isinstance(v, str) or (allow_none and v is None))
        for k, v in value.items()
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
