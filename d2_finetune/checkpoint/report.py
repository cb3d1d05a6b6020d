"""The record of a load: a report (``transfer.json``), its table for the log, and what in it
was left at the model's fresh initialisation."""

from tabulate import tabulate

__all__ = ["describe_problems", "fresh_tensors", "make_report", "report_table"]


def make_report(
    plan, *, source, file_info, resumed, strict, class_map, target_classes, class_init=None
):
    """The report of a load planned as ``plan`` (:class:`.plan.TransferPlan`): the file
    (``file_info``: local path, sha256, format, author, and what it was converted from), the
    class map by name, and every tensor
    loaded, transplanted (with its rows), re-initialised and ignored."""
    target = target_classes or [f"class {i}" for i in range(plan.num_classes or 0)]
    names = plan.source_classes
    by_name = {}
    if plan.mapping is not None:
        for name, s in zip(target, plan.mapping):
            by_name[name] = None if s is None else (names[s] if names is not None else f"class {s}")
    return {
        "source": source,
        **file_info,
        "resumed": resumed,
        "strict": strict,
        "class_map_setting": class_map,
        "class_init_setting": class_init,
        "target_classes": target_classes,
        "source_classes": names,
        "source_classes_from": plan.source_classes_from,
        "class_map": by_name,
        "class_map_note": plan.mapping_note,
        "loaded": plan.loaded,
        "transplanted": plan.transplanted,
        "reinitialized": plan.reinitialized,
        "ignored": plan.ignored,
        "from_config": plan.from_config,
    }


def fresh_tensors(report):
    """Model tensors that a load left (partly) at their fresh initialisation."""
    keys = [e["key"] for e in report.get("reinitialized", [])]
    keys += [e["key"] for e in report.get("transplanted", []) if e["fresh_rows"]]
    return keys


PROBLEM_TITLES = {
    "shape": "shape differs",
    "missing": "missing from the checkpoint",
    "unexpected": "not in the model",
}


def describe_item(kind, item):
    """One problem of ``kind`` (see :data:`PROBLEM_TITLES`) as text."""
    if kind == "shape":
        key, source, target = item
        return f"{key} (checkpoint {tuple(source)}, model {tuple(target)})"
    return item[0]


def describe_problems(problems, limit=6):
    """The problems of a plan, ``limit`` of each kind named, as one line."""
    parts = []
    for kind, items in problems.items():
        if not items:
            continue
        shown = [describe_item(kind, item) for item in items[:limit]]
        more = f" and {len(items) - limit} more (all in the log)" if len(items) > limit else ""
        parts.append(f"{PROBLEM_TITLES[kind]} ({len(items)}): " + ", ".join(shown) + more)
    return "; ".join(parts)


def report_table(report):
    """The report as tables for the log: tensors not loaded as saved, then the class map."""
    rows = []
    for e in report["transplanted"]:
        rows.append(
            (
                e["key"],
                tuple(e["source_shape"]),
                tuple(e["shape"]),
                f"transplanted {len(e['rows'])} rows, {len(e['fresh_rows'])} fresh",
            )
        )
    for e in report["reinitialized"]:
        source = tuple(e["source_shape"]) if e["source_shape"] is not None else "-"
        rows.append((e["key"], source, tuple(e["shape"]), "re-initialised: " + e["reason"]))
    for e in report["ignored"]:
        rows.append((e["key"], tuple(e["source_shape"]), "-", "ignored: " + e["reason"]))
    rows.append((f"{len(report['loaded'])} other tensors", "", "", "loaded as saved"))
    table = tabulate(rows, headers=["tensor", "checkpoint", "model", "action"], tablefmt="pipe")
    text = (
        f"Loaded {report['source']} ({report['format']}, sha256 {report['sha256'][:12]}…)"
        f"{' to resume' if report['resumed'] else ''}\n{table}"
    )
    if report["class_map"]:
        pairs = [(t, s if s is not None else "(fresh)") for t, s in report["class_map"].items()]
        origin = report["source_classes_from"] or "unknown"
        text += "\n" + tabulate(
            pairs, headers=["class", f"starts from (classes: {origin})"], tablefmt="pipe"
        )
    return text
