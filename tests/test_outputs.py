"""hw1.outputs: the one rule for output paths, alone and as each command that writes uses it."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

import eval as eval_script
import viz
from conftest import REPO
from helpers import cli_error
from hw1 import outputs, summary
from hw1.checkpoint import EXPORT, export_checkpoint
from hw1.data.masks import write_mask
from hw1.errors import UserError
from hw1.outputs import MASK_MARK, check_output, check_outputs, problem
from hw1.predict import main as predict_main
from hw1.predict import predict_cls

# every case here is one of docs/reliability.md's
pytestmark = pytest.mark.reliability


def image(path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return path


def file(path, text="x"):
    path.write_text(text)
    return path


def course_csv(root):
    (root / "val_50").mkdir()
    return file(root / "val_gt.csv", "filename,label\n")


def figure(path):
    Figure().savefig(path, format=path.suffix[1:])
    return path


def test_new_paths_and_files_of_the_kind_written_pass(tmp_path):
    assert problem(tmp_path / "new" / "a.csv", "csv") is None
    assert problem(file(tmp_path / "old.csv", "filename,label\n"), "csv") is None  # an earlier output: running again is no error
    assert problem(figure(tmp_path / "f.png"), "figure") is None
    assert problem(write_mask(np.zeros((2, 2), np.int64), tmp_path / "m.png", text=MASK_MARK), "mask") is None
    assert problem(file(tmp_path / "r.json", '{"acc": 1.0, "per_class_acc": [1.0]}'), "metrics-json") is None


@pytest.mark.parametrize("kind, make, reason", [
    ("csv", lambda p: image(p / "x.png"), "holds a .png file, which a CSV would replace"),
    ("json", lambda p: file(p / "x.pth"), "holds a .pth file"),
    ("figure", lambda p: image(p / "x.png"), "holds a file that is not a figure matplotlib drew"),
    ("mask", lambda p: write_mask(np.zeros((2, 2), np.int64), p / "x_mask.png"), "a mask that hw1.predict did not"),
    ("csv", course_csv, "a CSV of the course's data"),
])
def test_files_of_another_kind_are_refused(kind, make, reason, tmp_path):
    path = make(tmp_path)
    before = path.read_bytes() if path.is_file() else None
    assert reason in problem(path, kind)
    with pytest.raises(UserError, match="pass --overwrite to replace it"):
        check_output(path, kind)
    assert before is None or path.read_bytes() == before
    if path.is_file():
        check_output(path, kind, overwrite=True)  # told to: allowed


def test_inputs_and_files_of_input_folders_are_refused(tmp_path):
    src = file(tmp_path / "a.csv", "filename,label\n")
    assert problem(src, "csv", [("--gt", src)]) == "is an input of this command (--gt)"
    labels, image = file(tmp_path / "val_gt.csv", "filename,label\n"), file(tmp_path / "0_1.png")
    for path in labels, image:
        assert "would replace a file of the input folder" in problem(path, "csv", [("--data-dir", tmp_path)])
    # an earlier output of the kind written is no input of the folder's: replaced as anywhere else
    assert problem(src, "csv", [("--data-dir", tmp_path)]) is None
    assert problem(tmp_path / "b.csv", "csv", [("--data-dir", tmp_path)]) is None  # a new file beside inputs
    assert problem(src, "csv", [("--labels", None)]) is None  # an input not given


def test_files_of_a_run_are_refused(cls_tiny_run):
    run = cls_tiny_run[0]
    assert problem(run / "args.json", "json") == f"is a file of the training run in {run}"
    assert problem(run / "last.pth", EXPORT) == f"is a file of the training run in {run}"
    assert problem(run / "summary.json", "json") is None


def test_a_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="is a folder; write the figure to a file path"):
        check_output(tmp_path, "figure", overwrite=True)
    file(tmp_path / "file")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "sub" / "out.csv", "csv")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_outputs(tmp_path / "file", ["a.png"], "mask")


@pytest.mark.reliability
def test_an_output_that_is_a_link_to_nothing_is_refused_before_any_work(tmp_path):
    """OUT a link whose target does not exist: refused when checked, before the work (it failed at the
    end, after every mask was made)."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    for check in (lambda: check_outputs(link, ["0000_mask.png"], "mask"), lambda: check_output(link, "csv")):
        with pytest.raises(UserError, match=f"{link}: is a link to {tmp_path / 'gone'}, which does not exist"):
            check()
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_masks_into_an_input_folder_are_refused(tmp_path):
    write_mask(np.zeros((2, 2), np.int64), tmp_path / "0001_mask.png")
    with pytest.raises(UserError, match="is the input IMAGE_DIR; the outputs would replace its files"):
        check_outputs(tmp_path, ["0001_mask.png"], "mask", inputs=[("IMAGE_DIR", tmp_path)])
    # earlier predictions in the input folder (predict seg SAT SAT run again) are no input: replaced
    write_mask(np.zeros((2, 2), np.int64), tmp_path / "0002_mask.png", text=MASK_MARK)
    assert check_outputs(tmp_path, ["0002_mask.png"], "mask", inputs=[("IMAGE_DIR", tmp_path)]) == [
        tmp_path / "0002_mask.png"]
    # a folder of earlier predictions is no input: its masks are replaced
    ours = tmp_path / "pred"
    write_mask(np.zeros((2, 2), np.int64), ours / "0001_mask.png", text=MASK_MARK)
    assert check_outputs(ours, ["0001_mask.png"], "mask", inputs=[("IMAGE_DIR", tmp_path)]) == [ours / "0001_mask.png"]


@pytest.mark.reliability
def test_data_roots(tmp_path):
    """The root of the course's data holds its split folders; a folder of images or predictions is none."""
    assert not outputs.holds_course_layout(tmp_path / "nonexistent") and not outputs.holds_course_layout(tmp_path)
    write_mask(np.zeros((2, 2), np.int64), tmp_path / "gt" / "0001_mask.png")
    assert not outputs.holds_course_layout(tmp_path / "gt")
    (tmp_path / "p1" / "val_50").mkdir(parents=True)
    assert outputs.holds_course_layout(tmp_path / "p1")


@pytest.mark.reliability
def test_predict_cls_again_into_a_folder_that_holds_an_image(cls_tiny_data, cls_tiny_checkpoint, tmp_path):
    # hw1_1.sh run twice from a folder with a photo in it: the second run replaces its own CSV
    image(tmp_path / "holiday.png")
    for _ in range(2):
        predict_cls(cls_tiny_data / "val_50", tmp_path / "pred.csv", checkpoint=cls_tiny_checkpoint, device="cpu")
    assert (tmp_path / "pred.csv").read_text().startswith("filename,label")


def git_repo(root, files):
    """A git repository at ``root`` that tracks ``{name: text or bytes}``."""
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(root)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "records"], check=True)
    return root


METRICS = '{"acc": 0.5, "per_class_acc": [0.5]}'
SUMMARY = '{"model": "densenet", "metric": "acc", "best": 0.5, "best_epoch": 1, "epochs": 2, "command": "x"}'
BENCH = '{"machine": {"command": "python -m hw1.bench --quick"}, "settings": {}}'


def test_a_json_file_is_replaced_only_by_the_command_that_writes_it(tmp_path):
    metrics, summary_, bench = (file(tmp_path / f"{n}.json", t) for n, t in
                                (("m", METRICS), ("s", SUMMARY), ("b", BENCH)))
    lone_args = file(tmp_path / "args.json", '{"model": "densenet", "epochs": 3}')  # no run folder around it
    listed = file(tmp_path / "runs.json", f"[{SUMMARY}, {SUMMARY}]")
    kinds = {"metrics-json": [metrics], "summary-json": [summary_, listed], "bench-json": [bench]}
    for kind, own in kinds.items():
        for path in [metrics, summary_, bench, listed, lone_args, file(tmp_path / "user.json", "[1, 2]")]:
            assert (problem(path, kind) is None) == (path in own), (kind, path.name)
    assert problem(lone_args, "json").startswith("holds a JSON file that no hw1 command writes")
    assert problem(bench, "json") is None  # the kind of a command that does not say which JSON it writes


def test_eval_json_over_a_lone_args_json(cls_tiny_data, tmp_path):
    args = file(tmp_path / "args.json", '{"model": "densenet", "epochs": 3}')
    gt = str(cls_tiny_data / "val_gt.csv")
    pred = str(shutil.copy(gt, tmp_path / "pred.csv"))
    one_line_refusal(lambda: eval_script.main(["--task", "cls", "--pred", pred, "--gt", gt, "--json", str(args)]), args)
    eval_script.main(["--task", "cls", "--pred", pred, "--gt", gt, "--json", str(tmp_path / "m.json")])
    eval_script.main(["--task", "cls", "--pred", pred, "--gt", gt, "--json", str(tmp_path / "m.json")])  # its own: again


def test_tracked_files_of_a_git_repository_are_never_replaced(cls_tiny_checkpoint, cls_tiny_run, tmp_path):
    from hw1.checkpoint import main as export_main

    repo = git_repo(tmp_path / "repo", {"results/r.json": SUMMARY, "README.md": "# hw1\n",
                                        "checkpoints/p2.pth": cls_tiny_checkpoint.read_bytes()})
    assert problem(repo / "results" / "r.json", "summary-json") == "is a file of the git repository (tracked)"
    one_line_refusal(lambda: summary.main([str(cls_tiny_run[0]), "--out", str(repo / "results" / "r.json")]),
                     repo / "results" / "r.json")
    one_line_refusal(lambda: export_main([str(cls_tiny_checkpoint), str(repo / "checkpoints" / "p2.pth")]),
                     repo / "checkpoints" / "p2.pth")
    export_main([str(cls_tiny_checkpoint), str(repo / "checkpoints" / "p2.pth"), "--overwrite"])  # told to
    assert problem(repo / "results" / "new.json", "summary-json") is None  # a new file in the repository
    file(repo / "results" / "untracked.json", SUMMARY)
    assert problem(repo / "results" / "untracked.json", "summary-json") is None
    if (REPO / ".git").exists():  # this checkout's own records and shipped models, read only
        assert problem(REPO / "results" / "p1_densenet_cpu.json", "bench-json").startswith("is a file of the git")
        assert problem(REPO / "checkpoints" / "p2_vgg16_fcn8s.pth", EXPORT).startswith("is a file of the git")
        assert problem(REPO / "README.md", "markdown").startswith("is a file of the git")


def test_report_markdown_and_figures_are_known_by_their_marks(tmp_path):
    repo = git_repo(tmp_path / "repo", {"README.md": "# hw1\n"})
    one_line_refusal(lambda: viz.main(["report", "--out", str(repo / "README.pdf")]), repo / "README.md")
    notes = file(tmp_path / "notes.md", "# my notes\n")
    assert problem(notes, "markdown") == "holds Markdown that is not a report viz.py wrote"
    assert problem(file(tmp_path / "r.md", outputs.REPORT_MARK + "\n# report\n"), "markdown") is None
    thesis = tmp_path / "thesis.pdf"
    thesis.write_bytes(b"%PDF-1.5\n/Producer (LaTeX)\n%%EOF\n")
    assert problem(thesis, "figure") == "holds a file that is not a figure matplotlib drew"
    assert problem(file(tmp_path / "logo.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>"), "figure") is not None
    for suffix in ("pdf", "svg", "png"):
        assert problem(figure(tmp_path / f"f.{suffix}"), "figure") is None
    one_line_refusal(lambda: viz.main(["curves", "--out-dir", str(tmp_path), "--name", "thesis", "--pdf",
                                       str(tmp_path / "none")]), thesis)


# --- every command that writes goes through the rule: output = one of its inputs, or a file of another kind ---

def one_line_refusal(call, path):
    path = Path(path)
    before = path.read_bytes()
    with pytest.raises(UserError) as e:
        call()
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert path.read_bytes() == before


def test_predict_cls_into_its_input_folder(cls_tiny_data, cls_tiny_checkpoint, tmp_path):
    folder = shutil.copytree(cls_tiny_data / "val_50", tmp_path / "val")
    target = sorted(folder.iterdir())[0]
    one_line_refusal(lambda: predict_cls(folder, target, checkpoint=cls_tiny_checkpoint, device="cpu"), target)
    gt = shutil.copy(cls_tiny_data / "val_gt.csv", tmp_path)
    (tmp_path / "train_50").mkdir()  # tmp_path now holds the course's layout: its CSV is ground truth
    one_line_refusal(lambda: predict_cls(folder, gt, checkpoint=cls_tiny_checkpoint, device="cpu"), gt)


def test_predict_cls_over_a_copy_of_the_course_labels(cls_tiny_data, cls_tiny_checkpoint, tmp_path):
    # val_gt.csv outside the data folder is still the course's ground truth
    gt = shutil.copy(cls_tiny_data / "val_gt.csv", tmp_path / "val_gt.csv")
    one_line_refusal(lambda: predict_cls(cls_tiny_data / "val_50", gt, checkpoint=cls_tiny_checkpoint,
                                         device="cpu"), gt)
    predict_cls(cls_tiny_data / "val_50", tmp_path / "pred.csv", checkpoint=cls_tiny_checkpoint, device="cpu")


def test_eval_json_over_its_ground_truth_or_a_run_file(cls_tiny_data, cls_tiny_run, tmp_path):
    gt = shutil.copy(cls_tiny_data / "val_gt.csv", tmp_path / "gt.csv")
    pred = shutil.copy(gt, tmp_path / "pred.csv")
    argv = ["--task", "cls", "--pred", str(pred), "--gt", str(gt)]
    one_line_refusal(lambda: eval_script.main([*argv, "--json", str(gt)]), gt)
    args = cls_tiny_run[0] / "args.json"
    one_line_refusal(lambda: eval_script.main([*argv, "--json", str(args)]), args)
    eval_script.main([*argv, "--json", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text())["acc"] == 1.0


def test_summary_out_over_its_run(cls_tiny_run):
    run = cls_tiny_run[0]
    one_line_refusal(lambda: summary.main([str(run), "--out", str(run / "metrics.jsonl")]), run / "metrics.jsonl")


def test_checkpoint_export_over_its_source(cls_tiny_checkpoint, tmp_path):
    src = shutil.copy(cls_tiny_checkpoint, tmp_path / "x.pth")
    one_line_refusal(lambda: export_checkpoint(src, src), src)


def test_viz_figure_over_an_input_image(tmp_path):
    folder = tmp_path / "validation"
    folder.mkdir()
    gt = write_mask(np.zeros((2, 2), np.int64), folder / "0000_mask.png")
    one_line_refusal(lambda: viz.main(["masks", "--checkpoints", "x.pth", "--data-dir", str(folder), "--ids", "0000",
                                       "--out-dir", str(folder), "--name", "0000_mask"]), gt)


def test_viz_report_over_a_picture_that_is_not_its_figure(tmp_path):
    (tmp_path / "report_files").mkdir()
    picture = image(tmp_path / "report_files" / "p1_photo.png")
    one_line_refusal(lambda: viz.main(["report", "--out", str(tmp_path / "report.pdf")]), picture)


def test_bench_out_over_a_run_file(cls_tiny_run):
    from hw1.bench.cli import main as bench_main

    args = cls_tiny_run[0] / "args.json"
    one_line_refusal(lambda: bench_main(["--quick", "--out", str(args)]), args)


# --- outputs that cannot be written ---------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.usefixtures("cls_one_thread")
@pytest.mark.parametrize("case", ["csv-onto-a-folder", "masks-onto-a-file", "json-onto-a-folder"])
def test_unwritable_output(case, cls_one_epoch_run, cls_tiny_data, seg_checkpoint, tmp_path, tmp_path_factory,
                           capsys):
    val = cls_tiny_data / "val_50"
    if case == "csv-onto-a-folder":
        target = tmp_path / "pred.csv"
        target.mkdir()
        argv = ["cls", val, target, "--checkpoint", cls_one_epoch_run / "last.pth"]
        main, problem = predict_main, "is a folder; write the CSV to a file path"
    elif case == "masks-onto-a-file":
        target = tmp_path / "masks"
        target.write_text("a file")
        main, argv, problem = predict_main, ["seg", val, target, "--checkpoint", seg_checkpoint], "exists and is not a folder"
    else:
        target = tmp_path / "m.json"
        target.mkdir()
        gt = cls_tiny_data / "val_gt.csv"
        pred = shutil.copy(gt, tmp_path_factory.mktemp("pred") / "pred.csv")  # not beside the output
        main, argv, problem = eval_script.main, ["--task", "cls", "--pred", pred, "--gt", gt, "--json", target], \
            "is a folder; write the JSON to a file path"
    err = cli_error(capsys, main, [str(a) for a in [*argv, *(["--device", "cpu"] if main is predict_main else [])]])
    assert err.startswith(f"error: {target}: {problem}")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # nothing else written beside it
