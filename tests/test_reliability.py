"""Reliability: bad input is one clear line, a crash keeps the last good checkpoint, no checkpoint runs code,
nothing is lost or misleading.

Each case and the test that shows it (tests of other files are named with their file):

A. Bad input: ``error: <file>: <problem>`` on stderr, exit status 2, no traceback (``--debug``
shows one), and no output file half-written.

| case | behaviour | test |
|---|---|---|
| corrupt PNG | error naming the file | test_data_cls.py::test_corrupt_image_names_the_file |
| corrupt PNG, ``python -m hw1.predict cls`` | one line, status 2, old CSV kept | test_cli_corrupt_png_keeps_the_previous_csv |
| truncated JPEG | error naming the file | test_data_seg.py::test_load_corrupt_image |
| truncated JPEG, ``python -m hw1.predict seg`` | one line, status 2, old masks kept | test_cli_truncated_jpeg_keeps_the_previous_masks |
| same, into a new output folder | no folder created | test_predict_seg_error_creates_no_output_folder |
| non-image file in a P1 folder | skipped with a warning | test_data_cls.py::test_non_image_files_are_skipped_with_a_warning |
| non-image file in a P2 folder | skipped with a warning | test_other_files_in_p2_folders_are_skipped_with_a_warning |
| empty folder | error naming it | test_data_cls.py::test_empty_and_missing_folders, test_data_seg.py::test_scan_pairs_empty_and_missing |
| empty folder, ``hw1.predict`` | one line, status 2, old CSV kept | test_predict_empty_folder_keeps_the_previous_csv |
| missing folder | one line, status 2, no CSV | test_predict_eval_cls.py::test_predict_cli_missing_folder |
| grayscale / RGBA / palette, P1 | converted | test_data_cls.py::test_odd_images_are_converted_and_resized |
| grayscale / RGBA / palette, P2 | converted; masks at the input's size | test_data_seg.py::test_load_converts_grayscale_rgba_palette, test_predict_seg_converts_modes_and_keeps_sizes |
| wrong size, P1 | resized to 32x32 | test_data_cls.py::test_odd_images_are_converted_and_resized |
| wrong size, P2 prediction | mask of the input's size | test_seg_pipeline.py::test_predict_seg_outputs, test_predict_seg_converts_modes_and_keeps_sizes |
| wrong size, P2 pairs | any one size works; mixed sizes need ``--size`` | test_eval_checkpoint_on_pairs_of_an_odd_size, test_data_seg.py::test_load_size_mismatches |
| mask colours outside the palette | 3-bit threshold at 128; red is unknown | test_data_seg.py::test_threshold_at_128, ::test_red_is_unknown, ::test_near_colours, test_eval_reads_off_palette_masks_by_thresholding |
| image and mask sets that differ | error naming the files | test_data_seg.py::test_scan_pairs_unpaired, test_seg_pipeline.py::test_seg_confusion_different_ids_name_the_pred_folder, test_train_seg_with_an_unpaired_image_exits_2 |
| malformed label CSV | error naming the file and line | test_data_cls.py::test_read_labels_csv_errors_name_the_file, test_label_csv_that_is_not_a_clean_table |
| label CSV with a byte-order mark | read | test_label_csv_with_a_byte_order_mark |
| malformed CSV, ``eval.py`` | one line, status 2, old JSON kept | test_cli_malformed_gt_csv_keeps_the_previous_json |
| label outside 0..49 | error naming the file | test_predict_eval_cls.py::test_eval_pred_label_out_of_range, test_label_outside_the_50_classes |
| checkpoint of the other task | error naming it | test_predict_eval_cls.py::test_eval_argument_errors, test_seg_pipeline.py::test_predict_seg_refuses_a_cls_checkpoint, ::test_train_seg_refuses_to_resume_a_cls_checkpoint, test_train_cls_refuses_to_resume_a_seg_checkpoint |
| corrupt checkpoint | error naming it | test_predict_eval_cls.py::test_truncated_checkpoint_is_corrupt, ::test_garbage_checkpoint_is_a_user_error, test_checkpoint_fields_of_the_wrong_type |
| corrupt checkpoint for ``--resume`` | one line, status 2, run folder untouched | test_resume_from_a_corrupt_checkpoint_leaves_the_run_untouched |
| ``--resume`` pointing at nothing | one line, status 2, run folder untouched | test_resume_from_nothing |
| ``--resume`` with other optimizer flags, or without optimizer state | one line, status 2, nothing written | test_resume_into_a_run_it_does_not_fit |
| output path that cannot be written | one line, status 2 | test_unwritable_output |
| ``--debug`` | the traceback instead | test_cli.py::test_run_turns_user_errors_into_one_line_and_status_2 |

B. Crash safety.

| case | behaviour | test |
|---|---|---|
| SIGKILL while saving | the previous checkpoint loads; temporary files are hidden ``.tmp`` | test_sigkill_while_saving_keeps_a_loadable_checkpoint |
| a save that fails (disk full) | one line; previous checkpoint kept; no temporary file | test_failed_save_keeps_the_previous_checkpoint |
| non-finite loss | one line; last.pth is the previous epoch's | test_train_cls.py::test_non_finite_loss_stops_the_run, ::test_non_finite_loss_from_the_criterion |
| non-finite loss after ``--resume`` | the checkpoint resumed from is unchanged | test_non_finite_loss_after_resume_keeps_the_checkpoint |

C. Security: a checkpoint that would run code when unpickled is refused and the code does not run.

| case | test |
|---|---|
| ``load_checkpoint``, ``predict_cls``, ``eval.py`` | test_predict_eval_cls.py::test_checkpoint_that_runs_code_is_refused |
| ``train_cls.py --resume`` | test_resume_of_a_checkpoint_that_runs_code |
| ``predict_seg`` | test_predict_seg_refuses_a_checkpoint_that_runs_code |
| every ``torch.load`` passes ``weights_only=True`` | test_every_torch_load_is_weights_only |
| pretrained weights read from the torch hub cache | test_pretrained_weights_from_the_hub_cache_load_weights_only (expected to fail) |

D. Resume exactness: test_train_cls.py::test_resume_is_equivalent_to_an_uninterrupted_run (no
workers) and test_resume_with_dataloader_workers_is_exact (one worker, random augmentation).

E. Nothing lost, nothing misleading.

| case | behaviour | test |
|---|---|---|
| ``--demo --data-dir`` with data the demo did not write | one line, status 2, nothing written | test_demo_refuses_a_folder_of_other_data |
| ``--demo`` into an empty folder, or its own of other arguments | written; only its own files replaced | test_demo_writes_into_an_empty_folder_and_redoes_only_its_own |
| ``--demo --out-dir`` a folder holding a real run | refused; a demo replaces only a demo run | test_run_dir.py::test_demo_never_replaces_a_real_run_but_replaces_a_demo_run |
| ``--resume CKPT --out-dir`` a folder holding another run | refused, untouched; a new folder gets the history | test_run_dir.py::test_resume_into_a_folder_holding_another_run_is_refused |
| two masks of one id in an ``eval.py --task seg`` folder | one line naming both | test_seg_pipeline.py::test_seg_confusion_refuses_two_masks_of_one_id |
| ``hw1.bench`` without ``--out`` | a new dated file, never a committed record | test_bench.py::test_default_out_is_a_new_file_never_a_record_already_there |
| ``hw1.bench --data-dir`` a folder without ``train_50/`` | one line, status 2, nothing written | test_bench.py::test_a_data_dir_named_but_missing_is_one_line_exit_2 |
| ``python -m hw1.checkpoint X X``, or over a training checkpoint | refused unless ``--overwrite`` | test_predict_eval_cls.py::test_export_never_replaces_a_training_checkpoint_unless_told |
| ``predict cls DIR DIR/0_450.png`` (the CSV over an image) | one line, the image untouched | test_predict_eval_cls.py::test_predict_cls_never_writes_its_csv_over_an_image |
| ``viz.py --dpi 0``, ``eval.py --batch-size -5``, ``hw1.bench --steps 0``, ... | one line, status 2, nothing written | test_cli.py::test_numeric_flags_out_of_range_are_one_line_exit_2 |
| ``--out-dir a_file/sub`` or ``/proc/x`` | one line: cannot create the run folder | test_run_dir.py::test_an_out_dir_that_cannot_be_created_is_one_line |
| a run that gained ``--ema`` at a resume, in ``hw1.summary`` and the report | the raw best over the epochs that have it | test_summary.py::test_summary_of_a_run_that_gained_ema_at_a_resume |
| resuming an EMA run without ``--ema`` | one line: resume it with ``--ema`` (the average is not dropped) | test_ema_tta.py::test_ema_run_ships_the_average_and_resumes_exactly |
| the suite in a checkout named ``hw1`` | a traceback is told by its frames, not by a path | test_distributed.py::test_batch_that_does_not_split_is_a_one_line_error |
| full disk at the ``metrics.jsonl`` append | one line, status 2, no half line (real process) | test_full_disk_at_the_metrics_append_is_one_line |
| PNG of any bit depth and colour type | scaled to 8 bits, P1 / P2 / masks alike | test_every_png_bit_depth_is_scaled_to_8_bits, test_16_bit_gray_reads_as_its_8_bit_picture |
| file name that is not UTF-8 | P1: one line, status 2, no CSV (real process); P2: mask written | test_names_that_are_not_utf8_are_one_line_for_a_csv_and_kept_for_masks |
| ``python -m hw1.predict`` piped into ``head``, which exits first | CSV written, quiet, status 141 (real process) | test_closed_stdout_ends_quietly_after_the_csv_is_written |
| label CSV name with a leading space | kept as written | test_file_names_keep_their_leading_spaces |
| SIGTERM during ``predict seg`` | no staging folder left, status 143 (real process) | test_sigterm_during_predict_seg_leaves_no_staged_masks |
| staging folders of a killed run | removed by the next run; a running one's kept | test_staging_folders_of_stopped_runs_are_swept |
| dangling link or link loop in an input folder | skipped with a warning | test_links_that_lead_nowhere_are_skipped_with_a_warning |
| ``viz.py features`` on one image | one line, status 2 (real process) | test_features_of_too_few_images_is_one_line |
| bf16 checkpoint resumed with ``--amp fp16`` | resumes on a fresh scaler, with a warning | test_resume_of_a_bf16_checkpoint_with_fp16 |
| stderr not a terminal | plain lines, no bars (real process); a bar on a terminal | test_a_log_that_is_not_a_terminal_gets_lines_not_bars, test_engine.py::test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere |
| ``hw1_1.sh`` / ``hw1_2.sh`` | predict with the given or default checkpoint and python | test_course_scripts_predict_with_the_checkpoint_they_are_given, test_course_scripts_find_python_and_their_default_checkpoints |
| ``hw1_download.sh`` | SHA-256 verified, atomic, a ``file://`` URL | test_download_template_writes_only_verified_files |
"""
import ast
import functools
import json
import multiprocessing
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
import train_cls
import train_seg
from hw1.checkpoint import load_checkpoint, save_checkpoint
from hw1.cli import run
from hw1.data.cls import load_cls_split, read_labels_csv
from hw1.data.masks import PALETTE, write_mask
from hw1.data.seg import scan_pairs
from hw1.errors import UserError
from hw1.models import build_model
from hw1.outputs import MASK_MARK
from hw1.predict import main as predict_main
from hw1.predict import predict_seg
from hw1.scoring import list_masks, seg_confusion_from_dirs

pytestmark = pytest.mark.usefixtures("cls_one_thread")

REPO = Path(__file__).resolve().parents[1]
SEG_CONFIG = {"num_classes": 7, "fc_channels": 8, "batch_norm": False}


# --- helpers --------------------------------------------------------------------------------------


def cli_error(capsys, main, argv):
    """Run ``main`` as a script does (through ``hw1.cli.run``); return its one-line stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run(main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0]


def snapshot(folder):
    """``{name: bytes}`` of every file in ``folder``, hidden ones included."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def contents(path):
    """What is at ``path`` now: a folder's :func:`snapshot`, a file's bytes, or None."""
    if path is None or not path.exists():
        return None
    return snapshot(path) if path.is_dir() else path.read_bytes()


def noise(rng, h, w, mode="RGB"):
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).convert(mode)


def write_pairs(folder, sizes, seed=0):
    """``{i:04d}_sat.jpg`` + ``_mask.png`` of random pixels and classes, one pair per (H, W) in ``sizes``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        noise(rng, h, w).save(folder / f"{i:04d}_sat.jpg")
        write_mask(rng.integers(0, 7, size=(h, w)), folder / f"{i:04d}_mask.png")
    return folder


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _RunsAShellCommandWhenUnpickled:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def save_code_running_checkpoint(path, marker):
    """An hw1-looking checkpoint whose unpickling would create ``marker``."""
    payload = _RunsAShellCommandWhenUnpickled(f"touch {shlex.quote(str(marker))}")
    torch.save({"model": payload, "model_name": "densenet", "model_config": {}}, path)
    return path


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """An untrained VGG16-FCN32s (fc6/fc7 8 channels wide) in the hw1 checkpoint format."""
    model = build_model("vgg16_fcn32s", **SEG_CONFIG, weights="none")
    path = tmp_path_factory.mktemp("seg_ckpt") / "seg.pth"
    torch.save({"model": model.state_dict(), "model_name": "vgg16_fcn32s", "model_config": SEG_CONFIG,
                "task": "seg"}, path)
    return path


@pytest.fixture(scope="module")
def cls_one_epoch_run(cls_tiny_data, cls_tiny_train_argv, tmp_path_factory):
    """Run folder of a 1-epoch tiny DenseNet run (no epoch_NNN.pth). Read-only: copy it to change it."""
    out = tmp_path_factory.mktemp("one_epoch")
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, out, "--save-epochs", epochs=1))
    return out


def copy_run(run_dir, tmp_path):
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


# --- A. real command lines, run side by side -------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, cls_tiny_data, cls_one_epoch_run, seg_checkpoint):
    """Three failing command lines run as real processes at once; ``{case: (CompletedProcess, paths)}``.

    Each starts Python and imports torch (seconds), so they run in parallel.
    """
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    cases = {}

    # P1 prediction over a folder with a corrupt PNG, where an earlier prediction CSV exists.
    images = root / "cls_images"
    images.mkdir()
    shutil.copy(cls_tiny_data / "val_50" / "0_0.png", images / "0_0.png")
    (images / "1_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    csv_out = root / "pred.csv"
    csv_out.write_text("filename,label\nold.png,1\n")
    cases["corrupt_png"] = ([sys.executable, "-m", "hw1.predict", "cls", images, csv_out,
                             "--checkpoint", cls_one_epoch_run / "last.pth", "--device", "cpu"],
                            {"bad": images / "1_bad.png", "out": csv_out})

    # P2 prediction where the second image is a truncated JPEG and the output folder has old masks.
    sats = root / "sat_images"
    sats.mkdir()
    for i in range(2):
        noise(rng, 40, 40).save(sats / f"000{i}_sat.jpg", quality=90)
    truncate(sats / "0001_sat.jpg")
    masks_out = root / "masks"
    write_mask(np.zeros((40, 40), np.int64), masks_out / "0000_mask.png", text=MASK_MARK)  # an earlier prediction
    cases["truncated_jpeg"] = ([sys.executable, "-m", "hw1.predict", "seg", sats, masks_out,
                                "--checkpoint", seg_checkpoint, "--device", "cpu"],
                               {"bad": sats / "0001_sat.jpg", "out": masks_out})

    # Scoring against a ground-truth CSV that lists a file twice, where an earlier --json exists.
    gt = root / "gt.csv"
    gt.write_text("filename,label\na.png,1\nb.png,2\na.png,3\n")
    pred = root / "p.csv"
    pred.write_text("filename,label\na.png,1\nb.png,2\n")
    json_out = root / "metrics.json"
    json_out.write_text('{"acc": 0.5}\n')
    cases["malformed_csv"] = ([sys.executable, "eval.py", "--task", "cls", "--pred", pred, "--gt", gt,
                               "--json", json_out], {"bad": gt, "out": json_out})

    # P1 prediction over a folder with a file name that is not UTF-8 (a CSV cannot hold it).
    odd = root / "odd_names"
    odd.mkdir()
    shutil.copy(cls_tiny_data / "val_50" / "0_0.png", odd / "0_0.png")
    shutil.copy(cls_tiny_data / "val_50" / "0_1.png", os.fsdecode(os.fsencode(odd) + b"/caf\xe9.png"))
    cases["non_utf8_name"] = ([sys.executable, "-m", "hw1.predict", "cls", odd, root / "odd.csv",
                               "--checkpoint", cls_one_epoch_run / "last.pth", "--device", "cpu"],
                              {"out": root / "odd.csv"})

    # PCA and t-SNE of the features of a single image.
    one = root / "one_image"
    one.mkdir()
    shutil.copy(cls_tiny_data / "val_50" / "0_0.png", one / "0_0.png")
    cases["features_of_one_image"] = ([sys.executable, "viz.py", "features", "--checkpoints",
                                       cls_one_epoch_run / "last.pth", "--data-dir", one, "--out-dir", root / "fig",
                                       "--device", "cpu"], {"bad": one, "out": root / "fig"})

    before = {name: contents(paths.get("out")) for name, (_, paths) in cases.items()}
    env = dict(os.environ, OMP_NUM_THREADS="1")  # see cls_one_torch_thread in conftest.py
    procs = {name: subprocess.Popen([str(a) for a in argv], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (argv, _) in cases.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        completed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        results[name] = (completed, {**cases[name][1], "before": before[name]})
    return results


def test_cli_corrupt_png_keeps_the_previous_csv(cli_runs):
    result, paths = cli_runs["corrupt_png"]
    assert_one_line_error(result, paths["bad"], "cannot read image")
    assert contents(paths["out"]) == paths["before"]
    assert [p.name for p in paths["out"].parent.glob(".pred.csv.*")] == []  # no temporary file left


def test_cli_truncated_jpeg_keeps_the_previous_masks(cli_runs):
    result, paths = cli_runs["truncated_jpeg"]
    assert_one_line_error(result, paths["bad"], "cannot read image")
    # Neither the first image's new mask nor a staging folder: the folder is as it was.
    assert contents(paths["out"]) == paths["before"]
    assert [p.name for p in paths["out"].iterdir()] == ["0000_mask.png"]


def test_features_of_too_few_images_is_one_line(cli_runs):
    result, paths = cli_runs["features_of_one_image"]
    assert_one_line_error(result, f"{paths['bad']}: 1 image(s); PCA and t-SNE need at least 3")
    assert not paths["out"].exists()


def test_cli_malformed_gt_csv_keeps_the_previous_json(cli_runs):
    result, paths = cli_runs["malformed_csv"]
    assert_one_line_error(result, paths["bad"], "line 4: a.png is listed twice (first on line 2)")
    assert contents(paths["out"]) == paths["before"]


# --- A. in-process entry points ----------------------------------------------------------------------


def test_predict_seg_error_creates_no_output_folder(seg_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noise(np.random.default_rng(0), 24, 24).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(UserError, match="b.png: cannot read image"):
        predict_seg(folder, tmp_path / "out" / "masks", checkpoint=seg_checkpoint, device="cpu")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no masks folder, no staging folder


def test_other_files_in_p2_folders_are_skipped_with_a_warning(tmp_path, caplog):
    folder = write_pairs(tmp_path / "pairs", [(8, 8)])
    (folder / "notes.txt").write_text("not an image")
    (folder / "0000_sat.png").write_bytes(b"")  # a satellite image with the wrong extension
    (folder / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level("WARNING"):
        assert [i for i, _, _ in scan_pairs(folder)] == ["0000"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: skipped 2 file(s) not named xxxx_sat.jpg or xxxx_mask.png, e.g. 0000_sat.png"]
    caplog.clear()
    # Scoring mask folders: the satellite JPEGs beside the masks are expected, other files are not.
    with caplog.at_level("WARNING"):
        assert list(list_masks(folder)) == ["0000"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: skipped 1 file(s) that are not .png masks, e.g. notes.txt"]


def test_predict_empty_folder_keeps_the_previous_csv(cls_one_epoch_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "pred.csv"
    out.write_text("filename,label\nold.png,1\n")
    err = cli_error(capsys, predict_main, ["cls", str(empty), str(out), "--checkpoint",
                                           str(cls_one_epoch_run / "last.pth"), "--device", "cpu"])
    assert f"{empty}: no .png/.jpg images" in err
    assert out.read_text() == "filename,label\nold.png,1\n"


def test_predict_seg_converts_modes_and_keeps_sizes(seg_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"gray.png": (37, 50), "rgba.png": (20, 20), "palette.png": (33, 65), "cmyk.jpg": (50, 37)}
    for (name, (h, w)), mode in zip(sizes.items(), ("L", "RGBA", "P", "CMYK")):
        noise(rng, h, w, mode).save(folder / name)
    written = predict_seg(folder, tmp_path / "out", checkpoint=seg_checkpoint, device="cpu")
    assert sorted(p.name for p in written) == ["cmyk.png", "gray.png", "palette.png", "rgba.png"]
    palette = {tuple(c) for c in PALETTE}
    for name, (h, w) in sizes.items():
        with Image.open(tmp_path / "out" / (Path(name).stem + ".png")) as im:
            assert im.mode == "RGB" and (im.height, im.width) == (h, w)
            assert {tuple(c) for c in np.asarray(im).reshape(-1, 3)} <= palette


def test_eval_checkpoint_on_pairs_of_an_odd_size(seg_checkpoint, tmp_path, capsys):
    # 36x52 is no multiple of the network's stride of 32: the model pads, and every pixel is scored.
    folder = write_pairs(tmp_path / "val", [(36, 52)] * 3)
    summary = eval_py.main(["--task", "seg", "--checkpoint", str(seg_checkpoint), "--data-dir", str(folder),
                            "--device", "cpu"])
    assert f"(classes 0-5, {3 * 36 * 52} pixels)" in capsys.readouterr().out
    assert 0 <= summary["pixel_acc"] <= 1


def test_eval_reads_off_palette_masks_by_thresholding(tmp_path):
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 7, size=(16, 16))
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    write_mask(classes, pred_dir / "0000.png")
    # Ground truth drawn in off-palette colours: each channel moved up to 100 towards the middle.
    jitter = rng.integers(0, 101, size=(16, 16, 3))
    shaded = np.where(PALETTE[classes] > 127, PALETTE[classes] - jitter, PALETTE[classes] + jitter)
    shaded[0, 0] = (255, 0, 0)  # pure red is no class: read as unknown (6)
    gt_dir.mkdir()
    Image.fromarray(shaded.astype(np.uint8)).save(gt_dir / "0000_mask.png")
    cm = seg_confusion_from_dirs(pred_dir, gt_dir)
    expected = np.zeros((7, 7), np.int64)
    truth = classes.copy()
    truth[0, 0] = 6
    np.add.at(expected, (truth.ravel(), classes.ravel()), 1)
    np.testing.assert_array_equal(cm.numpy(), expected)


def test_train_seg_with_an_unpaired_image_exits_2(tmp_path, capsys):
    root = tmp_path / "data"
    write_pairs(root / "train", [(8, 8)])
    write_pairs(root / "validation", [(8, 8)])
    (root / "train" / "0000_mask.png").rename(root / "train" / "0001_mask.png")
    err = cli_error(capsys, train_seg.main, [
        "--model", "vgg16_fcn32s", "--weights", "none", "--fc-channels", "8", "--data-dir", str(root),
        "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--workers", "0", "--no-progress"])
    assert f"{root / 'train'}: 2 file(s) without their _sat.jpg/_mask.png partner: 0000_sat.jpg, 0001_mask.png" in err


@pytest.mark.parametrize("content, problem", [
    pytest.param(b"\xff\xfe\x00\x01\x89PNG", "not a UTF-8 text file", id="binary"),
    pytest.param("filename,label\ncaf\xe9.png,1\n".encode("latin-1"), "not a UTF-8 text file", id="latin-1"),
    pytest.param(b"filename,label\na.png,1\na.png,1\n", "line 3: a.png is listed twice", id="duplicate"),
    pytest.param(b"filename,label\n" + b"x" * 200_000 + b",1\n", "not a readable CSV", id="huge-field"),
    pytest.param(b"filename,label\na.png,\xc2\xb2\n", "line 2: expected", id="unicode-digit"),
    pytest.param(None, "not a file", id="folder"),
])
def test_label_csv_that_is_not_a_clean_table(tmp_path, content, problem):
    path = tmp_path / "gt.csv"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=problem) as info:
        read_labels_csv(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert len(str(info.value)) < 200


def test_label_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_bytes("\ufefffilename,label\r\na.png,1\r\n".encode())  # as spreadsheet programs save it
    assert read_labels_csv(path) == {"a.png": 1}


def test_label_outside_the_50_classes(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("0_a.png", "50_b.png"):
        noise(rng, 32, 32).save(folder / name)
    with pytest.raises(UserError, match="label 50 is outside 0..49") as info:
        load_cls_split(folder)
    assert str(info.value).startswith(str(folder / "50_b.png"))
    csv = tmp_path / "gt.csv"
    csv.write_text("filename,label\n0_a.png,-1\n50_b.png,3\n")
    with pytest.raises(UserError, match="label of 0_a.png -1 is outside 0..49") as info:
        load_cls_split(folder, labels_csv=csv)
    assert str(info.value).startswith(str(csv))


def test_train_cls_refuses_to_resume_a_seg_checkpoint(seg_checkpoint, cls_tiny_data, cls_tiny_train_argv, tmp_path,
                                                      capsys):
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, tmp_path / "run", "--resume",
                                                                str(seg_checkpoint)))
    assert f"{seg_checkpoint}: a seg checkpoint (vgg16_fcn32s), not a cls one" in err


@pytest.mark.parametrize("change", [{"model": [1.0]}, {"model": torch.zeros(2)}, {"model_name": ["densenet"]},
                                    {"model_config": [10, 4]}], ids=["model-list", "model-tensor", "name-list",
                                                                     "config-list"])
def test_checkpoint_fields_of_the_wrong_type(tmp_path, change):
    path = tmp_path / "odd.pth"
    torch.save({"model": {}, "model_name": "densenet", "model_config": {}, **change}, path)
    key = next(iter(change))
    with pytest.raises(UserError, match=f"not an hw1 checkpoint \\('{key}' is a ") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))


def test_resume_from_a_corrupt_checkpoint_leaves_the_run_untouched(cls_one_epoch_run, cls_tiny_data,
                                                                   cls_tiny_train_argv, tmp_path, capsys):
    run_dir = copy_run(cls_one_epoch_run, tmp_path)
    corrupt = tmp_path / "corrupt.pth"
    shutil.copy(run_dir / "last.pth", corrupt)
    truncate(corrupt)
    before = snapshot(run_dir)
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(corrupt),
                                                                epochs=2))
    assert f"{corrupt}: corrupt or not a PyTorch checkpoint" in err
    assert snapshot(run_dir) == before


def test_resume_from_nothing(cls_one_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys):
    run_dir = copy_run(cls_one_epoch_run, tmp_path)
    before = snapshot(run_dir)
    missing = run_dir / "epoch_009.pth"
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", str(missing),
                                                                epochs=2))
    assert err == f"error: {missing}: checkpoint not found\n"
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("flags,problem", [
    (["--no-wd-norm"], "written with --no-wd-norm False, this run has True"),
    (["--opt", "adamw"], "written with --opt sgd, this run has adamw"),
    (["drop-optimizer"], "cannot resume from it: it has no optimizer"),
])
def test_resume_into_a_run_it_does_not_fit(cls_one_epoch_run, cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys,
                                          flags, problem):
    ckpt_path = cls_one_epoch_run / "last.pth"
    if flags == ["drop-optimizer"]:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        del ckpt["optimizer"]
        ckpt_path, flags = tmp_path / "weights_only.pth", []
        torch.save(ckpt, ckpt_path)
    out = tmp_path / "new_run"
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, out, "--resume", str(ckpt_path),
                                                                *flags, epochs=2))
    assert err == f"error: {ckpt_path}: {problem}" + (": resume with the same optimizer flags\n" if "this run" in problem
                                                       else " (weights only?); pass it as --weights to start a new "
                                                            "run from its weights\n")
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("case", ["csv-onto-a-folder", "masks-onto-a-file", "json-onto-a-folder"])
def test_unwritable_output(case, cls_one_epoch_run, cls_tiny_data, seg_checkpoint, tmp_path, capsys):
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
        main, argv, problem = eval_py.main, ["--task", "cls", "--pred", gt, "--gt", gt, "--json", target], \
            "is a folder; write the JSON to a file path"
    err = cli_error(capsys, main, [str(a) for a in [*argv, *(["--device", "cpu"] if main is predict_main else [])]])
    assert err.startswith(f"error: {target}: {problem}")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # nothing else written beside it


# --- B. crash safety ---------------------------------------------------------------------------------

CRASH_NUMEL = 2_000_000  # 8 MB of weights: a save takes long enough to be killed in the middle


def numbered_checkpoint(n):
    """A checkpoint in the hw1 format whose weights and epoch are both ``n``."""
    return {"model": {"weight": torch.full((CRASH_NUMEL,), float(n))}, "model_name": "densenet",
            "model_config": {}, "epoch": n}


def save_forever(path, done):
    """Save checkpoints done+1, done+2, ... over ``path`` until killed; ``done`` holds the last saved."""
    n = done.value
    while True:
        n += 1
        save_checkpoint(numbered_checkpoint(n), path)
        done.value = n


def test_sigkill_while_saving_keeps_a_loadable_checkpoint(tmp_path):
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("q", 0, lock=False)  # no lock: a lock held by a killed writer would never be freed
    path = tmp_path / "last.pth"
    rng = random.Random(0)
    kills_mid_write = rounds = 0
    while kills_mid_write < 3:
        rounds += 1
        assert rounds <= 30, "no kill landed inside a save"
        temps_before = len(list(tmp_path.glob(".last.pth.*.tmp")))
        writer = ctx.Process(target=save_forever, args=(path, done), daemon=True)
        writer.start()
        while done.value == 0:  # the first round needs one finished save to protect
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        writer.kill()  # SIGKILL: no finally block, no cleanup
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        kills_mid_write += len(list(tmp_path.glob(".last.pth.*.tmp"))) > temps_before

        ckpt = load_checkpoint(path)  # weights_only
        # The last finished save, or the one whose rename landed just before the kill.
        assert ckpt["epoch"] in (done.value, done.value + 1)
        assert bool((ckpt["model"]["weight"] == ckpt["epoch"]).all())
        done.value = ckpt["epoch"]
        # A killed save leaves a hidden .tmp file that no *.pth listing picks up.
        assert [p.name for p in tmp_path.glob("*.pth")] == ["last.pth"]
        assert all(re.fullmatch(r"\.last\.pth\.\w+\.tmp", p.name) for p in tmp_path.iterdir() if p != path)


def save_over_the_limit(path, conn):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        save_checkpoint(numbered_checkpoint(2), path)
        conn.send("saved")
    except UserError as e:
        conn.send(str(e))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(numbered_checkpoint(1), path)
    before = path.read_bytes()
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    writer = ctx.Process(target=save_over_the_limit, args=(path, child))
    writer.start()
    message = parent.recv()
    writer.join()
    assert message.startswith(f"{path}: cannot write (is the disk full?") and "\n" not in message
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # the partial file was removed


def test_non_finite_loss_after_resume_keeps_the_checkpoint(cls_one_epoch_run, cls_tiny_data, cls_tiny_train_argv,
                                                           tmp_path, monkeypatch, capsys):
    run_dir = copy_run(cls_one_epoch_run, tmp_path)
    before = {name: (run_dir / name).read_bytes() for name in ("last.pth", "best.pth")}

    class AlwaysNaN(torch.nn.CrossEntropyLoss):
        def forward(self, input, target):
            return super().forward(input, target) * float("nan")

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", AlwaysNaN)
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume",
                                                                str(run_dir / "last.pth"), epochs=2))
    assert err.startswith("error: loss became nan at epoch 2, step ")
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]


# --- C. security -------------------------------------------------------------------------------------


def test_predict_seg_refuses_a_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "MARKER"
    evil = save_code_running_checkpoint(tmp_path / "evil.pth", marker)
    folder = write_pairs(tmp_path / "in", [(8, 8)])
    with pytest.raises(UserError, match="refused to load") as info:
        predict_seg(folder, tmp_path / "out", checkpoint=evil, device="cpu")
    assert str(info.value).startswith(str(evil))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_resume_of_a_checkpoint_that_runs_code(cls_tiny_data, cls_tiny_train_argv, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = save_code_running_checkpoint(tmp_path / "evil.pth", marker)
    err = cli_error(capsys, train_cls.main, cls_tiny_train_argv(cls_tiny_data, tmp_path / "run", "--resume",
                                                                str(evil)))
    assert err.startswith(f"error: {evil}: refused to load")
    assert not marker.exists()


SOURCES = sorted([*(REPO / "hw1").rglob("*.py"), *REPO.glob("*.py")])


@functools.cache
def syntax_tree(path):
    return ast.parse(path.read_text(), str(path))


def calls_named(*names):
    """``(path, ast.Call)`` of every call ``x.name(...)`` or ``name(...)`` in the package and scripts."""
    for path in SOURCES:
        for node in ast.walk(syntax_tree(path)):
            if isinstance(node, ast.Call):
                func = node.func
                if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in names:
                    yield path, node


def passes_weights_only(call):
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def where(path, call):
    return f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}"


def test_every_torch_load_is_weights_only():
    loads = [(p, c) for p, c in calls_named("load", "loads") if ast.unparse(c.func) == "torch.load"]
    assert {p.name for p, _ in loads} >= {"checkpoint.py", "weights.py"}  # the scan does find them
    assert [where(p, c) for p, c in loads if not passes_weights_only(c)] == []
    # Nothing unpickles any other way.
    unpickling = [where(p, c) for p, c in calls_named("load", "loads", "Unpickler")
                  if ast.unparse(c.func).split(".")[0] in ("pickle", "dill", "joblib", "Unpickler")]
    imports = [f"{p.relative_to(REPO)}: from torch import load" for p in SOURCES
               if re.search(r"^\s*from torch import .*\bload\b", p.read_text(), re.M)]
    assert unpickling == [] and imports == []


def test_pretrained_weights_from_the_hub_cache_load_weights_only():
    calls = list(calls_named("get_state_dict", "load_state_dict_from_url"))
    assert calls
    assert [where(p, c) for p, c in calls if not passes_weights_only(c)] == []


def test_code_running_file_in_the_hub_cache_is_refused(tmp_path, monkeypatch):
    from torchvision.models import ConvNeXt_Tiny_Weights

    from hw1.models.weights import hub_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = hub_file(ConvNeXt_Tiny_Weights.IMAGENET1K_V1)
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    save_code_running_checkpoint(cached, marker)
    with pytest.raises(UserError, match=rf"{re.escape(str(cached))}: not a loadable state dict"):
        build_model("convnext", weights="imagenet")
    assert not marker.exists()


# --- D. resume exactness with DataLoader workers ----------------------------------------------------


def test_resume_with_dataloader_workers_is_exact(cls_tiny_data, cls_tiny_train_argv, tmp_path):
    # One worker process and random crops and flips: the workers' RNG streams derive from the main
    # process's torch RNG, which the checkpoint restores.
    extra = ("--workers", "1", "--aug", "light", "--save-epochs", "1")
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "whole", *extra, epochs=3))
    # Epochs 2 and 3 again, from the checkpoint of epoch 1, into a new folder.
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, tmp_path / "resumed", *extra, "--resume",
                                       str(tmp_path / "whole" / "epoch_001.pth"), epochs=3))

    def records(run_dir):
        timing = {"train_img_s", "train_seconds", "val_img_s", "wall_seconds"}
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    whole, resumed = records(tmp_path / "whole"), records(tmp_path / "resumed")
    # the new folder gets epoch 1's record from the checkpoint's folder, then its own epochs 2 and 3
    assert [r["epoch"] for r in whole] == [1, 2, 3] and [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed == whole
    a = load_checkpoint(tmp_path / "whole" / "last.pth")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- E. nothing lost, nothing misleading -------------------------------------------------------------


def tree(folder):
    """``{relative path: bytes}`` of every file under ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_demo_refuses_a_folder_of_other_data(task, cls_tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    if task == "cls":  # real-looking P1 images without val_gt.csv, a layout training accepts
        shutil.copytree(cls_tiny_data, data)
        (data / "val_gt.csv").unlink()
        main = train_cls.main
    else:
        write_pairs(data / "train", [(8, 8)] * 2)
        write_pairs(data / "validation", [(8, 8)])
        main = train_seg.main
    before = tree(data)
    err = cli_error(capsys, main, ["--demo", "--data-dir", str(data), "--out-dir", str(tmp_path / "run"),
                                   "--device", "cpu", "--workers", "0", "--no-progress"])
    first = "train/0000_mask.png" if task == "seg" else "train_50/0_0.png"
    assert err.startswith(f"error: {data}: holds files the demo did not write ({first}, ")
    assert tree(data) == before and not (tmp_path / "run").exists()


def test_demo_writes_into_an_empty_folder_and_redoes_only_its_own(tmp_path):
    from hw1.data.demo import make_cls_demo

    root = tmp_path / "demo"
    root.mkdir()
    make_cls_demo(root)
    assert json.loads((root / ".cls_demo.json").read_text()) == {"val_fraction": 0.2, "seed": 0, "complete": True}
    first = {p.name for p in (root / "val_50").iterdir()}
    # Its own folder, asked for other data (as an interrupted demo, whose marker is not complete,
    # is): the demo rewrites it, and no file of the first one is left over.
    make_cls_demo(root, val_fraction=0.5, seed=1)
    val_names = {line.split(",")[0] for line in (root / "val_gt.csv").read_text().splitlines()[1:]}
    assert {p.name for p in (root / "val_50").iterdir()} == val_names != first
    assert len(list((root / "train_50").iterdir())) + len(val_names) == 1797
    assert json.loads((root / ".cls_demo.json").read_text()) == {"val_fraction": 0.5, "seed": 1, "complete": True}


def png_bytes(pixels, bit_depth, color_type, palette=None):
    """A PNG file of ``pixels`` (H, W, channels) at any bit depth and colour type, written by hand:
    PIL cannot save most of these (2- and 4-bit gray, 16-bit gray with alpha, 16-bit RGB)."""
    import struct
    import zlib

    h, w, _ = pixels.shape
    rows = []
    for row in pixels.reshape(h, -1).astype(np.uint64):
        if bit_depth >= 8:
            raw = row.astype(">u2" if bit_depth == 16 else np.uint8).tobytes()
        else:
            bits = "".join(format(int(v), f"0{bit_depth}b") for v in row)
            bits += "0" * (-len(bits) % 8)
            raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
        rows.append(b"\0" + raw)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + (chunk(b"PLTE", palette.astype(np.uint8).tobytes()) if palette is not None else b"")
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


# (PNG colour type, channels in the file, bit depths the format allows)
PNG_KINDS = {"gray": (0, 1, (1, 2, 4, 8, 16)), "rgb": (2, 3, (8, 16)), "palette": (3, 1, (1, 2, 4, 8)),
             "gray+alpha": (4, 2, (8, 16)), "rgba": (6, 4, (8, 16))}


@pytest.mark.parametrize("kind,bit_depth", [(k, d) for k, (_, _, depths) in PNG_KINDS.items() for d in depths])
def test_every_png_bit_depth_is_scaled_to_8_bits(kind, bit_depth, tmp_path):
    from hw1.data.images import read_rgb
    from hw1.data.masks import read_mask
    from hw1.data.seg import load_seg_split

    color_type, channels, _ = PNG_KINDS[kind]
    rng = np.random.default_rng(bit_depth)
    top = 2 ** bit_depth - 1
    samples = rng.integers(0, top + 1, size=(6, 7, channels))
    samples[0, 0] = 0
    samples[0, 1] = top  # the extremes: black and full white
    palette = rng.integers(0, 256, size=(top + 1, 3)) if kind == "palette" else None
    # What each pixel is in 8 bits: 16-bit samples keep their high byte (as PIL reads 16-bit RGB),
    # fewer bits are stretched to 0..255; alpha is dropped.
    eight = samples >> 8 if bit_depth == 16 else samples * 255 // top
    expected = palette[samples[..., 0]] if kind == "palette" else \
        np.repeat(eight[..., :1], 3, -1) if kind.startswith("gray") else eight[..., :3]
    path = tmp_path / "0000_sat.png"
    path.write_bytes(png_bytes(samples, bit_depth, color_type, palette))
    np.testing.assert_array_equal(read_rgb(path), expected)  # P1 and prediction
    # P2 pairs and masks, read through the same conversion.
    shutil.copy(path, tmp_path / "0000_mask.png")
    pairs_folder = tmp_path / "pairs"
    pairs_folder.mkdir()
    shutil.copy(path, pairs_folder / "0000_sat.jpg")  # PIL opens files by their content, not their name
    shutil.copy(path, pairs_folder / "0000_mask.png")
    from hw1.data.masks import rgb_to_class
    assert load_seg_split(pairs_folder).images[0].permute(1, 2, 0).numpy().tolist() == expected.tolist()
    np.testing.assert_array_equal(read_mask(tmp_path / "0000_mask.png"), rgb_to_class(expected.astype(np.uint8)))


def test_16_bit_gray_reads_as_its_8_bit_picture(tmp_path):
    # The case that read as near-white: PIL saves and opens 16-bit grayscale as mode I;16.
    from hw1.data.images import read_rgb

    picture = np.random.default_rng(0).integers(0, 256, size=(32, 32)).astype(np.uint16)
    Image.fromarray(picture * 257).save(tmp_path / "gray16.png")  # 0..255 -> 0..65535
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode == "I;16"
    np.testing.assert_array_equal(read_rgb(tmp_path / "gray16.png"), np.repeat(picture[..., None], 3, -1))
    Image.fromarray(np.float32(picture)).save(tmp_path / "float.tiff")
    shutil.copy(tmp_path / "float.tiff", tmp_path / "float.png")
    with pytest.raises(UserError, match="float.png: a floating-point image"):
        read_rgb(tmp_path / "float.png")


def test_names_that_are_not_utf8_are_one_line_for_a_csv_and_kept_for_masks(cli_runs, seg_checkpoint, tmp_path):
    result, paths = cli_runs["non_utf8_name"]
    assert_one_line_error(result, "caf\\xe9.png: file name is not UTF-8 text")
    assert not paths["out"].exists()
    # Masks need no CSV: the mask of such an image keeps its name's bytes.
    folder = tmp_path / "in"
    folder.mkdir()
    noise(np.random.default_rng(0), 8, 8).save(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"), format="PNG")
    written = predict_seg(folder, tmp_path / "masks", checkpoint=seg_checkpoint, device="cpu")
    assert [os.fsencode(p.name) for p in written] == [b"caf\xe9.png"] and written[0].is_file()


def test_file_names_keep_their_leading_spaces(cls_one_epoch_run, tmp_path):
    from hw1.predict import predict_cls

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name in (" 1_a.png", "1_a.png"):
        noise(rng, 32, 32).save(folder / name)
    rows = predict_cls(folder, tmp_path / "pred.csv", checkpoint=cls_one_epoch_run / "last.pth", device="cpu")
    assert [name for name, _ in rows] == [" 1_a.png", "1_a.png"]
    assert read_labels_csv(tmp_path / "pred.csv") == dict(rows)  # the CSV names both files as they are
    gt = tmp_path / "gt.csv"
    gt.write_text("filename,label\n 1_a.png,3\n1_a.png, 4\n")  # a space before a label is still allowed
    assert read_labels_csv(gt) == {" 1_a.png": 3, "1_a.png": 4}
    assert load_cls_split(folder, labels_csv=gt).labels.tolist() == [3, 4]


def test_links_that_lead_nowhere_are_skipped_with_a_warning(tmp_path, caplog):
    from hw1.data.images import list_images

    folder = write_pairs(tmp_path / "pairs", [(8, 8)])
    (folder / "0001_sat.jpg").symlink_to(folder / "gone.jpg")  # its target is missing
    (folder / "0002_mask.png").symlink_to(folder / "0002_mask.png")  # a loop
    (folder / "0003_sat.jpg").symlink_to(folder / "0000_sat.jpg")  # a link to an image is an image
    (folder / "0003_mask.png").symlink_to(folder / "0000_mask.png")
    warning = f"{folder}: skipped 2 link(s) that lead nowhere (missing target or a loop), e.g. 0001_sat.jpg"
    listings = {  # every folder listing: P1 and prediction images, P2 pairs, masks to score
        "images": (lambda: [p.name for p in list_images(folder)],
                   ["0000_mask.png", "0000_sat.jpg", "0003_mask.png", "0003_sat.jpg"]),
        "pairs": (lambda: [i for i, _, _ in scan_pairs(folder)], ["0000", "0003"]),
        "masks": (lambda: list(list_masks(folder)), ["0000", "0003"]),
    }
    for name, (listing, expected) in listings.items():
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert listing() == expected, name
        assert [r.getMessage() for r in caplog.records] == [warning], name


def script_env():
    return dict(os.environ, OMP_NUM_THREADS="1")  # see cls_one_torch_thread in conftest.py


def test_full_disk_at_the_metrics_append_is_one_line(cls_tiny_run, cls_tiny_data, cls_tiny_train_argv, tmp_path):
    run_dir = copy_run(cls_tiny_run[0], tmp_path)  # 4 epochs: metrics.jsonl is longer than args.json
    before = tree(run_dir)
    limit = (run_dir / "metrics.jsonl").stat().st_size + 50

    def small_disk():  # files may grow to ``limit`` bytes: room to rewrite metrics.jsonl, not to add a line
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv = cls_tiny_train_argv(cls_tiny_data, run_dir, "--resume", run_dir / "last.pth", epochs=6)
    result = subprocess.run([sys.executable, "train_cls.py", *map(str, argv)], cwd=REPO, env=script_env(),
                            preexec_fn=small_disk, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"error: {run_dir / 'metrics.jsonl'}: cannot write (is the disk full? ")
    after = tree(run_dir)
    assert after.pop("args.json") and after == {k: v for k, v in before.items() if k != "args.json"}  # no half line


def test_closed_stdout_ends_quietly_after_the_csv_is_written(cls_one_epoch_run, cls_tiny_data, tmp_path):
    out = tmp_path / "pred.csv"
    proc = subprocess.Popen([sys.executable, "-m", "hw1.predict", "cls", str(cls_tiny_data / "val_50"), str(out),
                             "--checkpoint", str(cls_one_epoch_run / "last.pth"), "--device", "cpu"],
                            cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `| head` that has exited before the process prints
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert err == ""
    assert len(read_labels_csv(out)) == 12


def test_sigterm_during_predict_seg_leaves_no_staged_masks(seg_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(300):
        noise(rng, 64, 64).save(images / f"{i:04d}_sat.jpg")
    out = tmp_path / "masks"
    proc = subprocess.Popen([sys.executable, "-m", "hw1.predict", "seg", str(images), str(out),
                             "--checkpoint", str(seg_checkpoint), "--device", "cpu"],
                            cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(next(p.iterdir(), None) for p in tmp_path.glob(".masks.*.tmp")):  # a first mask is staged
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.terminate()  # SIGTERM, as `timeout` sends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and err == "terminated\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no masks folder, no staging folder


def test_staging_folders_of_stopped_runs_are_swept(seg_checkpoint, tmp_path):
    folder = write_pairs(tmp_path / "in", [(8, 8)])
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead, alive = proc.pid, os.getpid()  # the id of a process that has ended, and of one that runs
    out = tmp_path / "masks"
    stale = [tmp_path / f".masks.{dead}.k2j4.tmp", out / f".staged.{dead}.q8z1.tmp"]
    running = [tmp_path / f".masks.{alive}.a1b2.tmp", out / f".staged.{alive}.c3d4.tmp"]
    for p in stale + running:
        write_mask(np.zeros((8, 8), np.int64), p / "0000_mask.png")
    predict_seg(folder, out, checkpoint=seg_checkpoint, device="cpu")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in running)  # another run may still be writing those
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["0000_mask.png"]


def test_resume_of_a_bf16_checkpoint_with_fp16(cls_tiny_data, cls_tiny_train_argv, tmp_path, caplog):
    # A bf16 run (e.g. on an H100) continued with fp16 (e.g. on a T4), which needs a gradient scaler.
    run_dir = tmp_path / "run"
    train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--amp", "bf16", epochs=1))
    assert load_checkpoint(run_dir / "last.pth")["scaler"] == {}  # bf16 has no scaler state
    with caplog.at_level("WARNING"):
        record = train_cls.main(cls_tiny_train_argv(cls_tiny_data, run_dir, "--amp", "fp16", "--resume",
                                                    str(run_dir / "last.pth"), epochs=2))
    assert record["epoch"] == 2
    assert f"{run_dir / 'last.pth'}: written without fp16's gradient scaler (--amp bf16); this run's fp16 " \
           "starts a fresh one" in caplog.messages
    ckpt = load_checkpoint(run_dir / "last.pth")
    assert ckpt["args"]["amp"] == "fp16" and ckpt["scaler"]["scale"] > 0


def test_a_log_that_is_not_a_terminal_gets_lines_not_bars(tmp_path):
    from conftest import CLS_TINY_MODEL_ARGS, make_cls_tiny

    data = make_cls_tiny(tmp_path / "data", train_per_class=40, val_per_class=1)  # 120 steps of 1 image
    argv = [*CLS_TINY_MODEL_ARGS, "--data-dir", data, "--out-dir", tmp_path / "run", "--epochs", "1", "--aug", "none",
            "--batch-size", "1", "--micro-batch", "0", "--device", "cpu", "--amp", "none", "--workers", "0"]
    result = subprocess.run([sys.executable, "train_cls.py", *map(str, argv)], cwd=REPO, env=script_env(),
                            capture_output=True, text=True, timeout=180)  # stderr is a pipe, as in `> log 2>&1`
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr  # no progress bar
    lines = result.stderr.splitlines()
    steps = [line.split(" INFO ")[1].split("  loss")[0] for line in lines if "  step " in line]
    assert steps == ["epoch 1  step 100/120"]
    assert sum(" INFO epoch 1/1  loss " in line for line in lines) == 1


def course_script(name, *args, cwd, env=None):
    return subprocess.Popen(["bash", str(REPO / name), *map(str, args)], cwd=cwd, env={**script_env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_course_scripts_predict_with_the_checkpoint_they_are_given(cls_one_epoch_run, cls_tiny_data, seg_checkpoint,
                                                                   tmp_path):
    from hw1.predict import predict_cls

    shutil.copytree(cls_tiny_data / "val_50", tmp_path / "images")
    write_pairs(tmp_path / "sat", [(16, 16)] * 2)
    # Paths relative to the caller's folder, as the course's grader passes them.
    p1 = course_script("hw1_1.sh", "images", "pred.csv", cwd=tmp_path,
                       env={"HW1_P1_CHECKPOINT": str(cls_one_epoch_run / "last.pth")})
    p2 = course_script("hw1_2.sh", "sat", "masks", cwd=tmp_path, env={"HW1_P2_CHECKPOINT": str(seg_checkpoint)})
    for proc in (p1, p2):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    expected = predict_cls(tmp_path / "images", tmp_path / "again.csv", checkpoint=cls_one_epoch_run / "last.pth",
                           device="cpu")
    assert (tmp_path / "pred.csv").read_text() == (tmp_path / "again.csv").read_text() and len(expected) == 12
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["0000_mask.png", "0001_mask.png"]


def test_course_scripts_find_python_and_their_default_checkpoints(tmp_path):
    # A copy of the scripts without a venv, and a python3 on the PATH that records how it was called.
    clone = tmp_path / "clone"
    (clone / "checkpoints").mkdir(parents=True)
    for name in ("hw1_1.sh", "hw1_2.sh", "hw1_predict.sh"):
        shutil.copy(REPO / name, clone / name)
    (clone / "checkpoints" / "p1_densenet.pth").write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text('#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH" "$@" > "$CALLED"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLED": str(tmp_path / "called"), "PYTHONPATH": ""}

    def call(script):
        result = subprocess.run(["bash", str(clone / script), "in", "out"], cwd=tmp_path, env={**os.environ, **env},
                                capture_output=True, text=True, timeout=60)
        return result, (tmp_path / "called").read_text().splitlines() if result.returncode == 0 else None

    result, called = call("hw1_1.sh")
    assert called == [str(clone), "-m", "hw1.predict", "cls", "in", "out", "--checkpoint",
                      str(clone / "checkpoints" / "p1_densenet.pth")]  # the shipped model A
    assert result.stderr == f"hw1_1.sh: checkpoint {clone / 'checkpoints' / 'p1_densenet.pth'}\n"
    (clone / "checkpoints" / "p1.pth").write_bytes(b"")
    assert call("hw1_1.sh")[1][-1] == str(clone / "checkpoints" / "p1.pth")  # the downloaded one comes first
    shipped = clone / "checkpoints" / "p2_vgg16_fcn32s.pth"
    result, _ = call("hw1_2.sh")  # neither a downloaded nor the shipped P2 checkpoint
    assert result.returncode == 2 and result.stderr == (
        f"error: {shipped}: checkpoint not found; run 'bash hw1_download.sh' first or set HW1_P2_CHECKPOINT\n")
    shipped.write_bytes(b"")
    result, called = call("hw1_2.sh")
    assert called == [str(clone), "-m", "hw1.predict", "seg", "in", "out", "--checkpoint", str(shipped)]
    assert result.stderr == f"hw1_2.sh: checkpoint {shipped}\n"
    (clone / "checkpoints" / "p2.pth").write_bytes(b"")
    assert call("hw1_2.sh")[1][-1] == str(clone / "checkpoints" / "p2.pth")  # the downloaded one comes first


def test_download_template_writes_only_verified_files(tmp_path):
    import hashlib

    served = tmp_path / "served"
    served.mkdir()
    (served / "p2.pth").write_bytes(np.random.default_rng(6).bytes(300_000))
    good = hashlib.sha256((served / "p2.pth").read_bytes()).hexdigest()
    url = (served / "p2.pth").as_uri()  # file://, as urllib fetches any URL
    dest = tmp_path / "checkpoints"
    shipped = (REPO / "hw1_download.sh").read_text()
    assert len(re.findall(r'^CHECKPOINTS="\n.*?\n"$', shipped, re.S | re.M)) == 1

    def download(entries=None):
        script = tmp_path / "hw1_download.sh"
        script.write_text(shipped if entries is None else
                          re.sub(r'^CHECKPOINTS="\n.*?\n"$', lambda m: f'CHECKPOINTS="\n{entries}\n"', shipped,
                                 flags=re.S | re.M))
        return subprocess.run(["bash", str(script)], env={**os.environ, "HW1_CHECKPOINT_DIR": str(dest)},
                              capture_output=True, text=True, timeout=60)

    result = download()  # the template as shipped
    assert result.returncode == 1 and "fill in CHECKPOINTS" in result.stderr and not dest.exists()
    result = download(f"p2.pth  {url}  {good}")
    assert result.returncode == 0 and result.stdout == f"{dest / 'p2.pth'}: downloaded, SHA-256 matches\n"
    assert (dest / "p2.pth").read_bytes() == (served / "p2.pth").read_bytes()
    assert download(f"p2.pth  {url}  {good}").stdout == f"{dest / 'p2.pth'}: already there, SHA-256 matches\n"
    # A hash that does not match, a URL that serves nothing: errors, and what was there stays as it was.
    result = download(f"p2.pth  {url}  {'0' * 64}\np1.pth  {(served / 'none.pth').as_uri()}  {good}")
    assert result.returncode == 1
    assert f"SHA-256 is {good}, expected {'0' * 64}; {dest / 'p2.pth'} not written" in result.stderr
    assert f"error: {(served / 'none.pth').as_uri()}: " in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(dest) == ["p2.pth"] and (dest / "p2.pth").read_bytes() == (served / "p2.pth").read_bytes()
    # A damaged file is replaced by a verified download.
    (dest / "p2.pth").write_bytes(b"damaged")
    assert download(f"p2.pth  {url}  {good}").returncode == 0
    assert (dest / "p2.pth").read_bytes() == (served / "p2.pth").read_bytes()
