"""viz.py and hw1/plots.py on tiny generated data: each subcommand writes a PNG of the expected size.

P1 uses the session's tiny DenseNet run (conftest); P2 uses three 64x64 generated scenes and an
untrained VGG16-FCN32s with 16-channel fc6/fc7 saved as an hw1 checkpoint.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import viz  # noqa: E402
from helpers import assert_one_line_error  # noqa: E402
from hw1 import plots  # noqa: E402
from hw1.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from hw1.flags import parse_key_values  # noqa: E402
from hw1.data.masks import PALETTE  # noqa: E402
from hw1.data.scenes import make_seg_demo  # noqa: E402
from hw1.tasks import get_task  # noqa: E402
from hw1.tasks.seg import LAYOUT as SEG_LAYOUT  # noqa: E402
from hw1.errors import UserError  # noqa: E402
from hw1.models import build_model, get_spec  # noqa: E402
from hw1.models.introspect import model_summary  # noqa: E402
from hw1.report.evidence import read_pair  # noqa: E402

pytestmark = pytest.mark.usefixtures("cls_one_thread")
DPI = 40  # small figures keep the tests fast; sizes scale with it exactly


def px(width_in, height_in):
    """Pixel size of a figure of that many inches saved at DPI (matplotlib truncates)."""
    return int(width_in * DPI), int(height_in * DPI)


def png_size(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def seg_tiny(tmp_path_factory):
    """(validation folder, [3 checkpoint paths]) of an untrained tiny VGG16-FCN32s, saved at epochs 1, 2, 3."""
    root = make_seg_demo(tmp_path_factory.mktemp("seg_tiny"), SEG_LAYOUT, n_train=2, n_val=3, size=64)
    ckpts = []
    for epoch in (1, 2, 3):
        torch.manual_seed(epoch)
        config = {"fc_channels": 16}
        model = build_model("vgg16_fcn32s", weights="none", **config)
        # the scorer is zero-initialised (uniform predictions); random scores give varied masks
        torch.nn.init.normal_(model.score.weight, std=1.0)
        path = root / f"epoch_{epoch:03d}.pth"
        torch.save({"model": model.state_dict(), "model_name": "vgg16_fcn32s", "model_config": config,
                    "task": "seg", "args": {}, "epoch": epoch}, path)
        ckpts.append(path)
    return root / "validation", ckpts


def test_drawing_selects_no_backend_and_keeps_no_figures():
    """Figures are Figure objects made without pyplot: importing, drawing and saving switch no backend
    and leave nothing in pyplot's figure manager to close."""
    code = textwrap.dedent("""
        import io, sys, matplotlib
        def use(*args, **kwargs):
            raise AssertionError("matplotlib.use called")
        matplotlib.use = use
        import viz, hw1.report
        from hw1 import plots
        plots.curves_figure([("a", [{"epoch": 1, "val_loss": 1.0}])]).savefig(io.BytesIO(), format="png")
        assert "matplotlib.pyplot" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_features_writes_pca_and_tsne(cls_tiny_data, cls_tiny_run, tmp_path):
    run_dir = cls_tiny_run[0]
    ckpts = sorted(str(p) for p in run_dir.glob("epoch_*.pth"))
    assert len(ckpts) >= 2
    written = viz.main(["features", "--checkpoints", *ckpts, "--data-dir", str(cls_tiny_data / "val_50"),
                        "--out-dir", str(tmp_path), "--dpi", str(DPI), "--device", "cpu", "--pdf"])
    assert [p.name for p in written] == ["features_pca.png", "features_pca.pdf", "features_tsne.png",
                                         "features_tsne.pdf"]
    assert png_size(tmp_path / "features_pca.png") == px(8, 7)
    k = len(ckpts)
    assert png_size(tmp_path / "features_tsne.png") == px(5.5 * k + 1, 5.8)
    assert (tmp_path / "features_tsne.pdf").read_bytes().startswith(b"%PDF")


def test_class_colors_distinct_for_50():
    colours = plots.class_colors(50)
    assert len(set(tuple(c) for c in colours)) == 50


def test_masks_grid_size_and_exact_palette(seg_tiny, tmp_path):
    val_dir, ckpts = seg_tiny
    ids = ["0000", "0002"]
    written = viz.main(["masks", "--checkpoints", *map(str, ckpts), "--data-dir", str(val_dir), "--ids", *ids,
                        "--out-dir", str(tmp_path), "--dpi", str(DPI), "--device", "cpu"])
    panel, cols, rows = 2.6, 2 + len(ckpts), len(ids)
    assert png_size(written[0]) == px(panel * cols, panel * rows + 0.35 + (0.2 + 0.25 * 1 + 0.1))

    # Rebuild the same figure to know where its mask panels are, then read those pixels of the PNG.
    images, gts = zip(*(read_pair(val_dir, i, None) for i in ids))
    from hw1.predict import InferenceModel, segment

    preds = []
    for path in ckpts:
        model = InferenceModel.of(model_from_checkpoint(load_checkpoint(path)).eval(), torch.device("cpu"))
        preds.append([segment(model, torch.from_numpy(im).permute(2, 0, 1)).numpy() for im in images])
    fig = plots.mask_grid(list(images), list(gts), preds, ids=ids, pred_titles=["a", "b", "c"])
    boxes = [ax.get_position() for ax in fig.mask_axes]  # figure fractions, independent of dpi
    assert len(boxes) == rows * (1 + len(ckpts))
    png = np.asarray(Image.open(written[0]).convert("RGB"))
    height, width = png.shape[:2]
    palette = {tuple(c) for c in PALETTE}
    seen = set()
    for box in boxes:
        # inset by 2 px: the grey frame is drawn over the panel's border
        x0, x1 = int(np.ceil(box.x0 * width)) + 2, int(np.floor(box.x1 * width)) - 2
        y0, y1 = int(np.ceil((1 - box.y1) * height)) + 2, int(np.floor((1 - box.y0) * height)) - 2
        crop = png[y0:y1, x0:x1].reshape(-1, 3)
        assert crop.size
        colours = {tuple(c) for c in np.unique(crop, axis=0)}
        assert colours <= palette, colours - palette
        seen |= colours
    assert len(seen) >= 3  # the panels really show several classes


def test_masks_overlay_and_bad_id(seg_tiny, tmp_path):
    val_dir, ckpts = seg_tiny
    written = viz.main(["masks", "--checkpoints", str(ckpts[0]), "--data-dir", str(val_dir), "--ids", "0001",
                        "--overlay", "--size", "32", "--out-dir", str(tmp_path), "--dpi", str(DPI), "--device", "cpu"])
    assert png_size(written[0]) == px(2.6 * 3, 2.6 * 1 + 0.35 + (0.2 + 0.25 * 2 + 0.1))
    with pytest.raises(UserError, match="0999_sat.jpg"):
        viz.main(["masks", "--checkpoints", str(ckpts[0]), "--data-dir", str(val_dir), "--ids", "0999",
                  "--out-dir", str(tmp_path)])


def test_masks_refuses_a_classification_checkpoint(seg_tiny, cls_tiny_checkpoint, tmp_path):
    val_dir, _ = seg_tiny
    with pytest.raises(UserError, match=r"best.pth: a cls checkpoint"):
        viz.main(["masks", "--checkpoints", str(cls_tiny_checkpoint), "--data-dir", str(val_dir), "--ids", "0000",
                  "--out-dir", str(tmp_path), "--device", "cpu"])
    assert not list(tmp_path.iterdir())


def test_overlay_draws_edges():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.int64)
    mask[:, 2:] = 4
    out = plots.overlay(image, mask, alpha=0.5)
    assert (out[:, 1] == 0).all()  # the last column before the class change is an edge
    np.testing.assert_array_equal(out[0, 0], np.round(0.5 * 100 + 0.5 * PALETTE[0]).astype(np.uint8))


def test_curves_overlays_runs(cls_tiny_run, tmp_path):
    seg_run = tmp_path / "seg_run"
    seg_run.mkdir()
    lines = [{"epoch": e, "lr": 1e-3 / e, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 1.2 / e,
              "val_miou": 0.1 * e, "val_pixel_acc": 0.6} for e in (1, 2, 3)]
    (seg_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    written = viz.main(["curves", str(cls_tiny_run[0]), str(seg_run), "--labels", "cls", "seg",
                        "--out-dir", str(tmp_path), "--dpi", str(DPI)])
    assert png_size(written[0]) == px(15, 4.6)
    (seg_run / "metrics.jsonl").write_text("{not json\n" + json.dumps(lines[0]) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl: line 1"):
        viz.main(["curves", str(seg_run), "--out-dir", str(tmp_path)])
    with pytest.raises(UserError, match="metrics.jsonl: not found"):
        viz.main(["curves", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)])


def test_confusion_cls_and_seg(cls_tiny_data, cls_tiny_checkpoint, seg_tiny, tmp_path):
    written = viz.main(["confusion", "--checkpoint", str(cls_tiny_checkpoint), "--data-dir",
                        str(cls_tiny_data / "val_50"), "--out-dir", str(tmp_path), "--name", "p1",
                        "--dpi", str(DPI), "--device", "cpu"])
    assert png_size(written[0]) == px(16, 7)
    val_dir, ckpts = seg_tiny
    written = viz.main(["confusion", "--checkpoint", str(ckpts[-1]), "--data-dir", str(val_dir), "--size", "32",
                        "--out-dir", str(tmp_path), "--name", "p2", "--dpi", str(DPI), "--device", "cpu"])
    assert png_size(written[0]) == px(13, 5.2)


def test_confusion_figure_handles_absent_class(tmp_path):
    """Classes with no pixels at all have no IoU: drawn as n/a, not as 0 or a crash."""
    cm = torch.zeros(7, 7, dtype=torch.int64)
    cm[0, 0], cm[1, 0], cm[6, 6] = 5, 2, 1
    fig = plots.confusion_figure(cm, task=get_task("seg"), title="t")
    assert "n/a" in [t.get_text() for t in fig.axes[1].texts]
    (path,) = plots.save_figure(fig, tmp_path / "c.png", dpi=DPI)
    assert png_size(path) == px(13, 5.2)


def test_arch_draws_what_training_builds(tmp_path, capsys):
    """Without --model-config, the builder's defaults: the growth rate training uses (one home for it)."""
    import train_cls
    from hw1.trainer import start_run
    from hw1.tasks.cls import TASK as CLS

    viz.main(["arch", "--model", "densenet", "--out-dir", str(tmp_path), "--dpi", str(DPI)])
    trained = start_run(train_cls.get_args_parser(), [], CLS)
    built = build_model("densenet", weights="none", **trained.model_config)
    assert f"{sum(p.numel() for p in built.parameters()):,}" in capsys.readouterr().out


@pytest.mark.parametrize("model,config,size", [
    ("densenet", ["depth=10", "growth_rate=4"], 32),
    ("vgg16_fcn32s", ["fc_channels=16", "batch_norm=True"], 64),
])
def test_arch_figure_and_table(model, config, size, tmp_path, capsys):
    written = viz.main(["arch", "--model", model, "--model-config", *config, "--input-size", str(size),
                        "--out-dir", str(tmp_path), "--dpi", str(DPI)])
    table = capsys.readouterr().out
    built = build_model(model, weights="none", **parse_key_values(config))
    rows, total = model_summary(built, size, get_spec(model))
    assert total == sum(p.numel() for p in built.parameters())
    assert f"{total:,}" in table
    n = len(rows) + 1  # + the input box
    assert png_size(written[0]) == px(10, 0.62 * n + 1.3)
    out_shape = rows[-1][2]
    assert out_shape == ((50,) if model == "densenet" else (7, size, size))


def test_arch_bad_config_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="--model-config"):
        viz.main(["arch", "--model", "densenet", "--config", "depth=11", "--out-dir", str(tmp_path)])


# --- too little data ------------------------------------------------------------------------------


@pytest.mark.reliability
def test_features_of_too_few_images_is_one_line(cli_runs):
    result, paths = cli_runs["features_of_one_image"]
    assert_one_line_error(result, f"{paths['bad']}: 1 image(s); PCA and t-SNE need at least 3")
    assert not paths["out"].exists()
