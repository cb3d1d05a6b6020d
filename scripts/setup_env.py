"""Install what d2_finetune needs into the running Python environment.

Used by ``make`` on a fresh machine. Each step checks first and installs only what is missing,
so a second run installs nothing:

1. torch and torchvision (any importable torch >= 2.1 is kept);
2. detectron2 (an importable one, e.g. a source build, is kept; otherwise PyPI's
   ``sal-detectron2==0.7.2`` -- upstream detectron2 of Nov 2024 packaged as a CPython-3.10 wheel
   whose Python package runs on newer Pythons -- is re-tagged ``py3-none-any`` and installed);
3. d2_finetune itself in editable mode, with its dependencies;
4. for the tests (extra ``test``): MMDetection 3.3 (mmengine, mmdet, mmcv-lite), whose own Mask
   R-CNN the checkpoint converter is compared with (``tests/test_checkpoint_convert_mmdet.py``).
   They are installed without their dependency on opencv-python: the project's
   opencv-python-headless provides the same ``cv2``, and the two packages would overwrite each
   other's files. ``pip check``'s complaint about it is the one it may make.
"""

import argparse
import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
DETECTRON2_DIST = "sal-detectron2==0.7.2"
MMDET_PINS = ["mmengine==0.10.7", "mmdet==3.3.0", "mmcv-lite==2.1.0"]
# What those three need besides what the project already has (numpy<2 kept).
MMDET_DEPS = ["addict", "rich", "yapf", "terminaltables", "scipy", "six", "numpy<2"]
OPENCV_STANDIN = "requires opencv-python, which is not installed"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def probe(code):
    """Run ``code`` in a fresh interpreter; True if it exits cleanly."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def ensure_torch():
    check = (
        "import torch, torchvision\n"
        "v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2])\n"
        "assert v >= (2, 1), v\n"
    )
    if probe(check):
        print("torch: already installed")
        return
    pip("install", *TORCH_PINS)


def retag_wheel(src, dst_dir):
    """Rewrite a wheel's tag to py3-none-any (file name, WHEEL file and RECORD hash)."""
    name = os.path.basename(src)
    dist, version = name.split("-")[:2]
    dst = os.path.join(dst_dir, f"{dist}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        wheel_name = record_name = None
        payload = {}
        for info in zin.infolist():
            payload[info.filename] = zin.read(info.filename)
            if info.filename.endswith(".dist-info/WHEEL"):
                wheel_name = info.filename
            elif info.filename.endswith(".dist-info/RECORD"):
                record_name = info.filename
        lines = payload[wheel_name].decode().splitlines()
        lines = [ln for ln in lines if ln.strip() and not ln.startswith("Tag:")]
        lines.append("Tag: py3-none-any")
        payload[wheel_name] = ("\n".join(lines) + "\n").encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(payload[wheel_name]).digest())
        record = []
        for row in payload[record_name].decode().splitlines():
            if row.startswith(wheel_name + ","):
                row = (
                    f"{wheel_name},sha256={digest.rstrip(b'=').decode()},{len(payload[wheel_name])}"
                )
            record.append(row)
        payload[record_name] = ("\n".join(record) + "\n").encode()
        for fname, data in payload.items():
            zout.writestr(fname, data)
    return dst


def ensure_detectron2():
    if probe("import detectron2"):
        print("detectron2: already installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.10",
            "-d",
            tmp,
            DETECTRON2_DIST,
        )
        (wheel,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        fixed_dir = os.path.join(tmp, "py3")
        os.makedirs(fixed_dir)
        pip("install", retag_wheel(os.path.join(tmp, wheel), fixed_dir))


def ensure_plugin(extras):
    pip("install", "-e", ROOT + (f"[{extras}]" if extras else ""))


def ensure_mmdet():
    if probe("import mmdet, mmengine, mmcv"):
        print("mmdet: already installed")
        return
    pip("install", *MMDET_DEPS)
    pip("install", "--no-deps", *MMDET_PINS)


def check_requirements():
    """``pip check``, accepting only its note that mmengine and mmcv-lite lack opencv-python
    (opencv-python-headless provides their cv2)."""
    cmd = [sys.executable, "-m", "pip", "check"]
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    problems = [
        line for line in result.stdout.splitlines() if line.strip() and OPENCV_STANDIN not in line
    ]
    print(result.stdout, end="")
    if result.returncode and problems:
        raise SystemExit(f"pip check found broken requirements: {'; '.join(problems)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extras", default="test", help="extras of d2_finetune to install")
    args = parser.parse_args()
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    ensure_torch()
    ensure_detectron2()
    ensure_plugin(args.extras)
    if "test" in args.extras.split(","):
        ensure_mmdet()
    check_requirements()


if __name__ == "__main__":
    main()
