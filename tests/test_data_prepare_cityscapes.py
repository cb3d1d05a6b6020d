"""scripts/prepare_cityscapes.py: layout checks, cache, trainId images and the summary table."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from d2_finetune.data import cache
from d2_finetune.data import cityscapes as cs
from d2_finetune.demo.synthetic import make_cityscapes

from conftest import REPO, load_script

main = load_script("prepare_cityscapes").main


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.ENV_CACHE_DIR, raising=False)
    path = str(tmp_path / "data")
    make_cityscapes(path, {"train": 4, "val": 2}, size=(192, 96), seed=5, group_prob=0.7)
    return path


def _polygon_files(root, split):
    return [ann for _, ann in cs.cityscapes_files(*cs.cityscapes_split_dirs(root, split))]


def _train_ids(values, id2label):
    """The trainId encoding of Cityscapes ids, computed from the label table."""
    out = np.zeros_like(values)
    for v in np.unique(values):
        label = id2label[int(v) // 1000 if v >= 1000 else int(v)]
        if v >= 1000 and label.trainId != 255:
            out[values == v] = label.trainId * 1000 + int(v) % 1000
        else:
            out[values == v] = label.trainId
    return out


def test_train_id_images_match_cityscapesscripts(root, capsys):
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import id2label
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    main(["--root", root, "--train-ids", "--num-workers", "0"])
    json_files = _polygon_files(root, "train") + _polygon_files(root, "val")
    for json_file in json_files:
        stem = json_file[: -len("_polygons.json")]
        with Image.open(stem + "_instanceTrainIds.png") as im:
            assert im.mode == "I;16"
            instance = np.asarray(im).astype(np.int64)
        label = np.asarray(Image.open(stem + "_labelTrainIds.png"))
        assert label.dtype == np.uint8
        annotation = Annotation()
        annotation.fromJsonFile(json_file)
        assert (instance == np.asarray(createInstanceImage(annotation, "trainIds"))).all()
        assert (label == np.asarray(createLabelImage(annotation, "trainIds"))).all()
        ids = np.asarray(Image.open(stem + "_instanceIds.png")).astype(np.int64)
        assert (instance == _train_ids(ids, id2label)).all()
        assert (label == _train_ids(np.asarray(Image.open(stem + "_labelIds.png")), id2label)).all()
        assert (instance >= 1000).any()


def _expected_counts(root, split):
    """Images, instances per class and crowd regions, read from the official instanceIds PNGs."""
    from cityscapesscripts.helpers.labels import id2label

    counts = {name: 0 for name in cs.CITYSCAPES_THING_CLASSES}
    crowd = 0
    files = _polygon_files(root, split)
    for json_file in files:
        ids = np.asarray(Image.open(json_file.replace("_polygons.json", "_instanceIds.png")))
        for v in np.unique(ids):
            name = id2label[int(v) // 1000 if v >= 1000 else int(v)].name
            if name in counts:
                if v >= 1000:
                    counts[name] += 1
                else:
                    crowd += 1  # at most one group region per image in this data
    return {"images": len(files), **counts, "crowd regions": crowd}


def test_summary_table_and_cache(root, capsys):
    main(["--root", root, "--num-workers", "0"])
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = line.rsplit(None, 2)
        if len(cells) == 3 and cells[1].isdigit() and cells[2].isdigit():
            rows[cells[0].strip()] = (int(cells[1]), int(cells[2]))
    train, val = _expected_counts(root, "train"), _expected_counts(root, "val")
    for row in ["images", *cs.CITYSCAPES_THING_CLASSES, "crowd regions"]:
        assert rows[row] == (train[row], val[row]), row
    assert sum(train[c] for c in cs.CITYSCAPES_THING_CLASSES) > 10 and train["crowd regions"] > 0
    for split in ("train", "val"):
        path = cs.cache_file(cs.cityscapes_split_dirs(root, split)[1])
        assert (
            f"{split}: {train['images'] if split == 'train' else val['images']} images, "
            f"annotation cache {path}" in out
        )
        assert os.path.isfile(path)


def test_missing_root_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--root", str(tmp_path / "nothing")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"ERROR: Cityscapes not found: {tmp_path / 'nothing' / 'cityscapes'} does not exist" in err
    )
    assert "gtFine_trainvaltest.zip" in err


def test_folder_without_splits_is_reported(tmp_path, capsys):
    os.makedirs(tmp_path / "cityscapes" / "leftImg8bit")
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path)])
    assert "No Cityscapes split in" in capsys.readouterr().err


def test_half_present_split_is_reported(root, capsys):
    os.makedirs(os.path.join(root, "cityscapes", "leftImg8bit", "test", "berlin"))
    with pytest.raises(SystemExit):
        main(["--root", root, "--num-workers", "0"])
    gt_test = os.path.join(root, "cityscapes", "gtFine", "test")
    assert f"split 'test' not found: {gt_test} does not exist" in capsys.readouterr().err


def test_script_runs_the_tool(root):
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "prepare_cityscapes.py"), "--root", root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "crowd regions" in done.stdout and "images without instances" in done.stdout
