"""The package stands on its own: a non-editable install (no repository files on the path) runs
``simformer-train --help`` and a 3-iteration weak-shot pipeline from another folder."""
import os
import shutil
import subprocess
import sys

from tests.data.test_weakshot_training import CLASSES, NOVEL, _write_dataset
from tests.engine.test_pipeline import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAUNCHER = """
import simformer
from simformer.data.datasets.weakshot import register_simulated_weakshot
from simformer.engine.launch import run
for split in ("train", "val"):
    register_simulated_weakshot("pipe_" + split, {root!r} + "/images", {root!r} + "/full", {classes!r}, {novel!r})
if __name__ == "__main__":
    run()
"""


def test_non_editable_install_runs_from_another_folder(tmp_path):
    target = tmp_path / "site"
    src = tmp_path / "src"
    src.mkdir()  # a copy: the build writes build/ and *.egg-info next to setup.py
    for name in ("setup.py", "simformer", "ssa_adapter"):
        copy = shutil.copytree if os.path.isdir(os.path.join(REPO, name)) else shutil.copy
        copy(os.path.join(REPO, name), src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
         "--disable-pip-version-check", "-q", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the installed copy, not the repository (no editable finder: PYTHONPATH comes first)
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import simformer; print(simformer.__file__)"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(target)), where.stdout + where.stderr

    script = target / "bin" / "simformer-train"
    helped = subprocess.run([sys.executable, str(script), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--config-file" in helped.stdout, helped.stderr[-2000:]

    root = str(tmp_path / "data")
    _write_dataset(root, n=4)
    launcher = elsewhere / "my_train.py"
    launcher.write_text(LAUNCHER.format(root=root, classes=CLASSES, novel=NOVEL))
    config = os.path.join(REPO, "configs", "synthetic", "simformer", "seg.yaml")
    cmd = [sys.executable, str(target / "bin" / "simformer-pipeline"), "--stage1-config", config, "--output-dir", "run",
           "--train-script", str(launcher), *TINY]  # fmt: skip
    ran = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    for stage in ("stage1", "retrain"):
        assert (elsewhere / "run" / stage / "model_final.pth").is_file()
    assert (elsewhere / "run" / "summary.md").is_file()
