"""simformer-plot on a small metrics.json (with a resumed stretch and a broken line) and an evaluation file."""
import json
import os

import numpy as np
import torch
from PIL import Image

from simformer.tools.plot import BASE_COLOR, NOVEL_COLOR, bar_colors, main, read_metrics, write_plots

CLASSES = ["sky", "grass", "brick", "disk", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent", "arrow"]
NOVEL = {"triangle", "cross", "hexagon"}  # synthetic_ws_val's novel classes (registered on import)


def _write_output_dir(d):
    os.makedirs(d, exist_ok=True)
    lines = []
    for it in range(19, 400, 20):
        lines.append({"iteration": it, "total_loss": 20.0 / (1 + it / 50), "loss_ce": 2.0 / (1 + it / 80), "loss_dice": 0.8 - it / 1000,
                      "loss_ce_0": 2.1 / (1 + it / 80), "lr": 4e-4 * (1 - it / 400) ** 0.9, "time": 0.2, "data_time": 0.01})
        if it == 199:
            lines.append({"iteration": 200, "sem_seg/mIoU": 30.0, "sem_seg/mIoU_base": 38.0, "sem_seg/mIoU_novel": 5.0, "sem_seg/hIoU": 8.8,
                          "sem_seg/pACC": 70.0, **{f"sem_seg/IoU-{c}": 10.0 for c in CLASSES}})
    lines.append({"iteration": 400, "sem_seg/mIoU": 45.0, "sem_seg/mIoU_base": 55.0, "sem_seg/mIoU_novel": 10.0, "sem_seg/hIoU": 16.9, "sem_seg/pACC": 80.0})
    resumed = [dict(l, total_loss=1.0) for l in lines if l["iteration"] in (379, 399)]  # logged again after --resume
    with open(os.path.join(d, "metrics.json"), "w") as f:
        for rec in lines[:-3]:
            f.write(json.dumps(rec) + "\n")
        f.write('{"iteration": 3, "total_lo\n')  # a line cut short by a crash
        for rec in lines[-3:] + resumed:
            f.write(json.dumps(rec) + "\n")
    ev = os.path.join(d, "inference", "synthetic_ws_val")
    os.makedirs(ev)
    metrics = {"mIoU": 45.0, "mIoU_base": 55.0, "mIoU_novel": 10.0, "hIoU": 16.9}
    metrics.update({f"IoU-{c}": (5.0 if c in NOVEL else 60.0 + i) for i, c in enumerate(CLASSES)})
    torch.save(metrics, os.path.join(ev, "sem_seg_evaluation.pth"))


def test_read_metrics(tmp_path):
    _write_output_dir(str(tmp_path))
    train, evals = read_metrics(str(tmp_path / "metrics.json"))
    assert sorted(train["total_loss"]) == list(range(19, 400, 20))
    assert train["total_loss"][399] == 1.0 and train["total_loss"][359] != 1.0  # the resumed record wins
    assert set(evals) == {""} and evals[""]["mIoU"] == {200: 30.0, 400: 45.0}
    assert evals[""]["IoU-triangle"] == {200: 10.0}


def test_plot_command(tmp_path, capsys):
    _write_output_dir(str(tmp_path))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    names = ["losses.png", "lr.png", "eval_metrics.png", "per_class_iou_synthetic_ws_val.png"]
    for name in names:
        assert name in out
        img = Image.open(tmp_path / "plots" / name)
        assert img.format == "PNG" and img.size[0] >= 500 and img.size[1] >= 250
        assert np.asarray(img.convert("L")).std() > 5  # something drawn
    bars = np.asarray(Image.open(tmp_path / "plots" / "per_class_iou_synthetic_ws_val.png").convert("RGB")).reshape(-1, 3)
    for color in (BASE_COLOR, NOVEL_COLOR):  # both group colours are painted
        rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(bars.astype(int) - rgb).sum(1) < 10).sum() > 200


def test_bar_colors_and_other_dirs(tmp_path, capsys):
    groups = {"base": [i for i, c in enumerate(CLASSES) if c not in NOVEL], "novel": [CLASSES.index(c) for c in sorted(NOVEL)]}
    colors = bar_colors(CLASSES, CLASSES, groups)
    assert [c for c, col in zip(CLASSES, colors) if col == NOVEL_COLOR] == ["triangle", "cross", "hexagon"]
    assert bar_colors(["a", "b"], None, None) == [BASE_COLOR, BASE_COLOR]
    # evaluation file only (an --eval-only folder), written elsewhere
    d = tmp_path / "evalonly"
    _write_output_dir(str(d))
    os.remove(d / "metrics.json")
    paths = write_plots(str(d), str(tmp_path / "p"))
    assert [os.path.basename(p) for p in paths] == ["per_class_iou_synthetic_ws_val.png"]
    assert main([str(tmp_path / "empty_dir_missing")]) == 2
    os.makedirs(tmp_path / "empty")
    assert main([str(tmp_path / "empty")]) == 1 and "nothing to plot" in capsys.readouterr().err
