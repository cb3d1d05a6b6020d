"""scripts/setup_env.py re-tags the CPython-3.10 detectron2 wheel for any Python 3."""

import base64
import hashlib
import os
import zipfile

from conftest import load_script


def test_retag_wheel_rewrites_name_tag_and_record(tmp_path):
    src = tmp_path / "pkg-1.0-cp310-none-any.whl"
    wheel_text = "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n\nTag: cp310-cp310-linux_x86_64\n"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg-1.0.dist-info/WHEEL", wheel_text)
        z.writestr(
            "pkg-1.0.dist-info/RECORD",
            "pkg/__init__.py,,\npkg-1.0.dist-info/WHEEL,sha256=old,10\npkg-1.0.dist-info/RECORD,,\n",
        )
    out = load_script("setup_env").retag_wheel(str(src), str(tmp_path))
    assert os.path.basename(out) == "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        wheel = z.read("pkg-1.0.dist-info/WHEEL")
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
        assert z.read("pkg/__init__.py") == b"x = 1\n"
    lines = wheel.decode().splitlines()
    assert "Tag: py3-none-any" in lines and not any("cp310" in ln for ln in lines)
    assert "" not in lines  # a blank line would end the header block
    digest = base64.urlsafe_b64encode(hashlib.sha256(wheel).digest()).rstrip(b"=").decode()
    assert f"pkg-1.0.dist-info/WHEEL,sha256={digest},{len(wheel)}" in record


def test_pip_check_accepts_only_the_opencv_stand_in(monkeypatch):
    """mmengine and mmcv-lite declare opencv-python, whose cv2 opencv-python-headless provides:
    that complaint of pip check is accepted, any other stops the install."""
    import subprocess

    import pytest

    setup_env = load_script("setup_env")
    opencv = (
        "mmengine 0.10.7 requires opencv-python, which is not installed.\n"
        "mmcv-lite 2.1.0 requires opencv-python, which is not installed.\n"
    )
    outputs = iter([opencv, opencv + "foo 1.0 has requirement bar>=2, but you have bar 1.0.\n"])

    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, next(outputs), "")

    monkeypatch.setattr(setup_env.subprocess, "run", fake_run)
    setup_env.check_requirements()
    with pytest.raises(
        SystemExit,
        match=r"pip check found broken requirements: foo 1\.0 has "
        r"requirement bar>=2, but you have bar 1\.0\.$",
    ):
        setup_env.check_requirements()
