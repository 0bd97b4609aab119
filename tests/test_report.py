"""viz.py report / hw1.report on tiny runs: the PDF's pages, the Markdown's sections, the figures'
pixels, the notes on what is missing and the one-line errors for bad run folders.

P1 uses conftest's tiny DenseNet run (epochs 1, 2 and 4 kept); P2 trains a 3-epoch
VGG16-FCN32s with 16-channel fc6/fc7 on three 64x64 generated scenes (a few seconds on one thread).
"""
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import viz  # noqa: E402
from hw1 import report  # noqa: E402
from hw1.cli import run as run_cli  # noqa: E402
from hw1.data.scenes import make_seg_demo  # noqa: E402
from hw1.tasks.seg import LAYOUT as SEG_LAYOUT  # noqa: E402
from hw1.errors import UserError  # noqa: E402
from hw1.outputs import REPORT_MARK  # noqa: E402
from hw1.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("cls_one_thread")
DPI = 40
IDS = ["0000", "0001", "0002"]
SECTIONS = [
    "P1.1  Architecture of model A",
    "P1.2  Accuracy of models A and B on the validation set",
    "P1.3  Implementation details of model A",
    "P1.4  Model B and how it differs from model A",
    "P1.5  PCA of model A's penultimate features",
    "P1.6  t-SNE of model A's penultimate features: first, middle and last epoch",
    "P1.7  Training curves",
    "P2.1  Architecture of model A",
    "P2.2  Architecture of model B",
    "P2.3  mIoU of models A and B on the validation set",
    "P2.4  Implementation details of models A and B",
    "P2.5  Predicted masks during training: model B (the course asks for the improved model)",
    "P2.6  Predicted masks during training: model A",
    "P2.7  Training curves",
]


def pdf_pages(path):
    data = Path(path).read_bytes()
    assert data.startswith(b"%PDF")
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", data))


def assert_not_blank(rgb):
    """An image that shows something: not one flat colour, and not all white."""
    rgb = np.asarray(rgb)[..., :3].astype(np.float64)
    assert rgb.std() > 0
    assert (rgb < 250).any(axis=-1).mean() > 0.01


@pytest.fixture(scope="module")
def seg_tiny_run(tmp_path_factory):
    """(data root, run folder) of a 3-epoch tiny VGG16-FCN32s run keeping epochs 1, 2 and 3. Read-only."""
    import train_seg

    root = make_seg_demo(tmp_path_factory.mktemp("report_seg_data"), SEG_LAYOUT, n_train=2, n_val=3, size=64)
    out = tmp_path_factory.mktemp("report_seg_run")
    train_seg.main(["--model", "vgg16_fcn32s", "--weights", "none", "--fc-channels", "16", "--device", "cpu",
                    "--amp", "none", "--workers", "0", "--no-progress", "--batch-size", "2", "--crop-size", "64",
                    "--data-dir", str(root), "--out-dir", str(out), "--epochs", "3", "--lr", "1e-3"])
    return root, out


@pytest.fixture(scope="module")
def data_dir(cls_tiny_data, seg_tiny_run, tmp_path_factory):
    """A --data-dir in the course layout: p1_data and p2_data linked to the tiny data sets."""
    root = tmp_path_factory.mktemp("report_data")
    (root / "p1_data").symlink_to(cls_tiny_data, target_is_directory=True)
    (root / "p2_data").symlink_to(seg_tiny_run[0], target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def full_report(cls_tiny_run, seg_tiny_run, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_full") / "report.pdf"
    result = report.write_report(cls_runs=[str(cls_tiny_run[0]), "-"], seg_runs=[str(seg_tiny_run[1]), "-"],
                                 data_dir=data_dir, out=out, per_class=4, mask_ids=IDS, evaluate=True,
                                 notes="Tiny runs on generated data.", dpi=DPI, device=torch.device("cpu"),
                                 command="python viz.py report ...")
    return result


def test_report_pages_sections_and_figures(full_report, cls_tiny_run, seg_tiny_run):
    result = full_report
    titles = [s.title for s in result["sections"]]
    assert titles == [report.TITLE, *SECTIONS]
    # every section fits one page here; the PDF holds exactly those pages
    assert result["pages"] == len(titles) == pdf_pages(result["pdf"])

    md = result["markdown"].read_text()
    # the mark by which a later report knows the file as its own, then the report
    assert md.startswith(f"{REPORT_MARK}\n\n# {report.TITLE}\n\nTiny runs on generated data.")
    for title in SECTIONS:
        assert f"\n## {title}\n" in md
    # the figures: one PNG per section that has one, linked from the Markdown, none of them blank
    names = sorted(p.name for p in result["figures"])
    assert names == ["p1_1.png", "p1_5.png", "p1_6.png", "p1_7.png", "p2_1.png", "p2_2.png", "p2_6.png", "p2_7.png"]
    for path in result["figures"]:
        assert f"]({result['pdf'].stem}_files/{path.name})" in md
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert_not_blank(im.convert("RGB"))


def test_report_numbers_come_from_the_runs(full_report, cls_tiny_run, seg_tiny_run):
    md = full_report["markdown"].read_text()
    cls_records = [json.loads(line) for line in (cls_tiny_run[0] / "metrics.jsonl").read_text().splitlines()]
    best = max(cls_records, key=lambda r: r["val_acc"])
    assert f"| A: densenet | metrics.jsonl, epoch {best['epoch']} of {len(cls_records)} (best) | " \
           f"{best['val_acc']:.4f} |" in md
    seg_records = [json.loads(line) for line in (seg_tiny_run[1] / "metrics.jsonl").read_text().splitlines()]
    best = max(seg_records, key=lambda r: r["val_miou"])
    ious = " | ".join(report.fmt(v) for v in best["val_iou"][:6])
    assert f"(best) | {best['val_miou']:.4f} | {ious} |" in md
    # --evaluate scores best.pth again on the data
    assert md.count("fresh evaluation of best.pth") == 2
    args = json.loads((seg_tiny_run[1] / "args.json").read_text())
    assert f"| epochs, batch | {len(seg_records)} of 3 epochs, batch {args['batch_size']} |" in md
    # the details table's rows come from the config: no --ema, no checkpoint exported from the run
    assert md.count("| weight average (EMA) | none: the checkpoints hold the trained weights") == 2
    assert md.count("| test-time augmentation | none: no checkpoint in checkpoints/ is exported from this run") == 2
    assert args["command"] in md
    # the t-SNE shows the first, middle and last saved epoch of the P1 run
    assert "first = epoch 1, middle = epoch 2, last = epoch 4" in md
    # no run B: each part says so, with the command that trains it
    assert "python train_cls.py --model convnext" in md and "python train_seg.py --model resnet101_fcn" in md


def test_report_page_renders(full_report):
    """Draw the P1 architecture page (heading, figure, caption) on an Agg canvas and read its pixels."""
    figs = report.page_figures(full_report["sections"][:2], footer="test", interpolation="antialiased")
    figs = list(figs)
    assert len(figs) == 2
    canvas = FigureCanvasAgg(figs[1])
    canvas.draw()
    page = np.asarray(canvas.buffer_rgba())
    width, height = (int(round(v * figs[1].dpi)) for v in (report.PAGE_W, report.PAGE_H))
    assert page.shape[:2] == (height, width)
    assert_not_blank(page)
    # the embedded figure sits below the heading: its rows have dark pixels too
    assert (page[height // 3: 2 * height // 3, :, :3] < 100).any()


def test_missing_pieces_are_notes_with_commands(cls_tiny_run, cls_tiny_data, seg_tiny_run, tmp_path, capsys):
    """No middle epoch, no P2 data, a P2 run that never finished an epoch, no B runs: notes, not a crash."""
    cls_run = tmp_path / "cls_run"
    shutil.copytree(cls_tiny_run[0], cls_run)
    (cls_run / "epoch_002.pth").unlink()
    seg_run = tmp_path / "seg_run"
    seg_run.mkdir()
    shutil.copy(seg_tiny_run[1] / "args.json", seg_run / "args.json")
    data = tmp_path / "data"
    data.mkdir()
    (data / "p1_data").symlink_to(cls_tiny_data, target_is_directory=True)
    out = tmp_path / "out" / "r.pdf"
    written = viz.main(["report", "--cls-runs", str(cls_run), "--seg-runs", str(seg_run), "-", "--data-dir",
                        str(data), "--out", str(out), "--per-class", "4", "--dpi", str(DPI), "--device", "cpu"])
    assert written[:2] == [out, out.with_suffix(".md")]
    md = out.with_suffix(".md").read_text()
    for title in SECTIONS:
        assert f"\n## {title}\n" in md
    assert pdf_pages(out) >= len(SECTIONS) + 1
    # the t-SNE still shows the two epochs there are, and says how to get the middle one
    assert "first = epoch 1, last = epoch 4" in md
    assert "saved epoch_NNN.pth for 2 epoch(s) (1, 4)" in md
    assert re.search(r"python train_cls.py .*--save-epochs 1 2 4", md)
    # P2: no data, and a run with args.json only: how to extract the data and how to start it
    assert f"tar xzf p2_data.tar.gz -C {data}" in md
    assert "metrics.jsonl: not found" in md
    command = json.loads((seg_run / "args.json").read_text())["command"]
    assert command in md
    assert "python train_cls.py --model convnext" in md  # --cls-runs with one folder: no model B
    assert "| P2.5  Predicted masks during training: model B (the course asks for the improved model) | " \
           "1 note(s) on what is missing |" in md
    assert "wrote" in capsys.readouterr().out


def a_file(tmp):
    (tmp / "f.txt").write_text("x")
    return tmp / "f.txt"


@pytest.mark.parametrize("make,message", [
    (lambda tmp: tmp / "nowhere", "run folder not found"),
    (lambda tmp: tmp, "not a run folder"),  # an empty folder
    (a_file, "not a folder"),
])
def test_bad_run_folder_is_a_one_line_error(make, message, tmp_path, capsys):
    bad = make(tmp_path)
    with pytest.raises(UserError, match=message):
        viz.main(["report", "--cls-runs", str(bad), "--out", str(tmp_path / "r.pdf")])
    with pytest.raises(SystemExit) as exc:
        run_cli(viz.main, ["report", "--seg-runs", "-", str(bad), "--out", str(tmp_path / "r.pdf")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r.pdf").exists()


def test_other_bad_arguments(cls_tiny_run, tmp_path):
    with pytest.raises(UserError, match=r"a cls run \(densenet\); pass it to --cls-runs"):
        report.write_report(seg_runs=[str(cls_tiny_run[0])], out=tmp_path / "r.pdf", device=torch.device("cpu"))
    with pytest.raises(UserError, match="at most two run folders"):
        viz.main(["report", "--cls-runs", "-", "-", "-", "--out", str(tmp_path / "r.pdf")])
    with pytest.raises(UserError, match="expected a .pdf path"):
        viz.main(["report", "--out", str(tmp_path / "r.md")])
    assert not list(tmp_path.iterdir())


def test_commands_for_missing_pieces(cls_tiny_run):
    run = report.open_run(str(cls_tiny_run[0]), "cls", "A")
    assert sorted(run.epochs) == [1, 2, 4]
    # without a recorded command, args.json gives every flag back
    run.config = run.config.replace(command=None)
    command = report.train_command(run)
    assert command.startswith("python train_cls.py --model densenet ") and "--depth 10" in command
    assert "--device-name" not in command and "--debug" not in command
    assert report.with_flag("python t.py --save-epochs 1 2 --lr 0.1", "--save-epochs", [1, 5, 9]) \
        == "python t.py --lr 0.1 --save-epochs 1 5 9"
    none = report.open_run("-", "seg", "B")
    assert report.train_command(none, "data") == \
        "python train_seg.py --model resnet101_fcn --data-dir data/p2_data --out-dir runs/resnet101_fcn"


def test_the_seg_loss_row_says_each_term():
    from hw1.tasks.seg import SegConfig
    from hw1.report.details import seg_loss

    assert seg_loss(SegConfig(), None) == "pixel-wise cross-entropy, class 6 (unknown) ignored"
    assert seg_loss(SegConfig(class_weights="inv-sqrt", lovasz=0.5), None) == (
        "pixel-wise cross-entropy, class 6 (unknown) ignored, classes weighted by their share of the training "
        "pixels (inv-sqrt), + 0.5 x the Lovász-softmax loss (a surrogate of each class's IoU)")


def test_details_rows_come_from_the_config(cls_tiny_run, tmp_path, monkeypatch):
    """EMA from the config, flip TTA from the inference entry of a checkpoint exported from the run
    (found by its exported_from, relative to where the export ran), rows in the declared order."""
    from hw1.checkpoint import export_checkpoint
    from hw1.report import details, evidence

    run = report.open_run(str(cls_tiny_run[0]), "cls", "A")
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    (shipped / "partial.pth").write_bytes(b"an interrupted download")
    monkeypatch.chdir(run.path.parent)  # the export and the report run from the same folder
    export_checkpoint(Path(run.path.name) / "best.pth", shipped / "p1.pth", tta=True)
    found = evidence.exports(run.path, shipped)
    assert [(e.path.name, str(e.source), e.tta) for e in found] == [("p1.pth", f"{run.path.name}/best.pth", "flip")]
    assert evidence.exports(tmp_path, shipped) == []

    ema_run = dataclasses.replace(run, config=run.config.replace(ema=0.99))
    rows = details.details(details.RunFacts(ema_run, parameters=3066, exports=found))
    assert [k for k, _ in rows] == ["model", "model config", "parameters", "initial weights", "optimizer",
                                    "learning rate", "weight average (EMA)", "epochs, batch", "augmentation",
                                    "loss", "test-time augmentation", "runtime", "device"]
    values = dict(rows)
    assert values["weight average (EMA)"].startswith("decay 0.99 per optimizer step: the checkpoints hold the "
                                                     "average, and the validation scores are the average's")
    assert values["test-time augmentation"].startswith(f"{shipped / 'p1.pth'} (exported from best.pth) predicts "
                                                       f"with flip TTA")
    # without args.json only what the checkpoint says about the model
    bare = details.details(details.RunFacts(dataclasses.replace(run, config=None)))
    assert [k for k, _ in bare] == ["model", "model config", "settings"]


def test_fresh_scores_add_each_shipped_export_with_its_tta(cls_tiny_run, cls_tiny_data, tmp_path, monkeypatch):
    """--evaluate scores best.pth, then each checkpoint exported from the run as hw1.predict predicts
    with it: a crops-TTA export gets its crops-TTA accuracy, in a row that names it."""
    from hw1.checkpoint import export_checkpoint
    from hw1.report import evidence, sections
    from hw1.report.builder import ReportBuilder
    from hw1.scoring import model_confusion
    from hw1.metrics import accuracy

    run = report.open_run(str(cls_tiny_run[0]), "cls", "A")
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    monkeypatch.chdir(run.path.parent)
    export_checkpoint(Path(run.path.name) / "best.pth", shipped / "p1.pth", tta="crops")
    real_exports = evidence.exports
    monkeypatch.setattr(evidence, "exports", lambda path: real_exports(path, shipped))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p1_data").symlink_to(cls_tiny_data, target_is_directory=True)
    builder = ReportBuilder(cls_runs=[run], seg_runs=[], data_dir=tmp_path / "data", files_dir=tmp_path / "f",
                            per_class=4, perplexity=5, mask_ids=[], evaluate=True, dpi=DPI, device=torch.device("cpu"))
    data = (cls_tiny_data / "val_50", None)
    best, export = builder.fresh_score(run, "cls", data)
    assert (best.checkpoint.name, best.tta, best.exported_from) == ("best.pth", "none", None)
    assert (export.checkpoint, export.tta, export.exported_from.name) == (shipped / "p1.pth", "crops", "best.pth")
    model, _ = evidence.checkpoint_model(shipped / "p1.pth", "cls", torch.device("cpu"))
    assert model.tta == "crops"
    assert export.result["acc"] == accuracy(model_confusion(model, cls_tiny_data / "val_50", task=get_task("cls")))
    rows = sections.score_rows(get_task("cls"), run, [best, export])
    assert rows[-1][1] == (f"fresh evaluation of {shipped / 'p1.pth'} (shipped, exported from best.pth) "
                           f"({export.epoch}) on {cls_tiny_data / 'val_50'}, crops TTA")
    assert rows[-2][1].startswith("fresh evaluation of best.pth (") and "TTA" not in rows[-2][1]


def test_wrapping_keeps_lines_inside_the_width():
    text = "a fairly long sentence with /a/very/long/path/that/cannot/break/at/a/space/anywhere/at/all/here"
    lines = report.wrap(text, 1.5, report.BODY)
    assert " ".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(report.text_width(line, report.BODY) <= 1.5 for line in lines)
    folded = report.wrap_command("python x.py " + " ".join(f"--flag{i} {i}" for i in range(30)), 60)
    assert all(len(line) <= 60 for line in folded) and all(line.endswith(" \\") for line in folded[:-1])


def test_report_of_p2_alone_has_only_p2_sections_and_runs(seg_tiny_run, data_dir, tmp_path):
    out = tmp_path / "p2.pdf"
    viz.main(["report", "--seg-runs", str(seg_tiny_run[1]), "-", "--problems", "p2", "--mask-ids", *IDS,
              "--data-dir", str(data_dir), "--out", str(out), "--dpi", str(DPI), "--device", "cpu"])
    md = out.with_suffix(".md").read_text()
    titles = re.findall(r"^## (P\d\.\d+ .*)$", md, flags=re.M)
    assert titles == [t for t in SECTIONS if t.startswith("P2")]
    assert "| P1 model A |" not in md and "| P2 model A |" in md
    assert {p.name[:3] for p in (tmp_path / "p2_files").iterdir()} == {"p2_"}
