"""The shared command-line helpers: demo defaults, the course folder check, error reporting."""
import pytest
import torch

import train_cls
import train_seg
from hw1.cli import command_line, parse_args, require_layout, run
from hw1.errors import UserError


def test_demo_defaults_apply_but_explicit_flags_win():
    args = parse_args(train_cls.get_args_parser(), ["--demo", "--epochs", "3"], train_cls.DEMO_DEFAULTS)
    assert args.epochs == 3
    assert args.depth == train_cls.DEMO_DEFAULTS["depth"] and args.aug == train_cls.DEMO_DEFAULTS["aug"]
    plain = parse_args(train_cls.get_args_parser(), ["--epochs", "3"], train_cls.DEMO_DEFAULTS)
    assert plain.depth == 100 and plain.aug == "seed" and plain.data_dir == "hw1_data/p1_data"


def test_seg_demo_defaults_and_recipe():
    args = parse_args(train_seg.get_args_parser(), ["--demo", "--lr", "0.5"], train_seg.DEMO_DEFAULTS)
    assert args.lr == 0.5 and args.batch_norm and args.weights == "none" and args.crop_size == 128
    plain = train_seg.get_args_parser().parse_args([])
    assert plain.lr is None and plain.opt is None  # filled from RECIPES by main


def test_require_layout_names_the_folder_and_the_archive(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError) as e:
        require_layout(tmp_path, ("train", "validation"), "p2_data.tar.gz")
    assert str(tmp_path) in str(e.value) and "p2_data.tar.gz" in str(e.value)
    (tmp_path / "validation").mkdir()
    assert require_layout(tmp_path, ("train", "validation"), "p2_data.tar.gz") == tmp_path


def test_command_line_quotes_arguments():
    assert command_line("train_cls.py", ["--out-dir", "a b"]) == "python train_cls.py --out-dir 'a b'"


def test_run_turns_user_errors_into_one_line_and_status_2(capsys):
    def main(argv):
        raise UserError("x.png: broken")

    with pytest.raises(SystemExit) as e:
        run(main, [])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: x.png: broken\n"
    with pytest.raises(UserError):
        run(main, ["--debug"])


NUMERIC_FLAG_ERRORS = [
    ("eval", ["--task", "seg", "--batch-size", "-5"], "--batch-size -5: must be at least 1"),
    ("viz", ["curves", "runs/x", "--dpi", "0"], "--dpi 0: must be at least 1"),
    ("viz", ["curves", "runs/x", "--dpi", "-5"], "--dpi -5: must be at least 1"),
    ("viz", ["features", "--checkpoints", "a.pth", "--data-dir", "d", "--perplexity", "0"],
     "--perplexity 0.0: must be above 0"),
    ("viz", ["features", "--checkpoints", "a.pth", "--data-dir", "d", "--perplexity", "nan"],
     "--perplexity nan: must be above 0"),
    ("viz", ["features", "--checkpoints", "a.pth", "--data-dir", "d", "--num-classes", "0"],
     "--num-classes 0: must be at least 1"),
    ("viz", ["arch", "--model", "densenet", "--input-size", "1"], "--input-size 1: must be at least 32"),
    ("viz", ["confusion", "--checkpoint", "a.pth", "--data-dir", "d", "--batch-size", "-1"],
     "--batch-size -1: must be at least 1"),
    ("viz", ["masks", "--checkpoints", "a.pth", "--data-dir", "d", "--ids", "0013", "--alpha", "2"],
     "--alpha 2.0: must be in [0, 1]"),
    ("bench", ["--steps", "0"], "--steps 0: must be at least 1"),
    ("bench", ["--repeats", "0"], "--repeats 0: must be at least 1"),
    ("bench", ["--depth", "11"], "--depth 11: must be 6n+4 with n >= 1 (10, 16, 22, ..., 100)"),
    ("bench", ["--width", "inf"], "--width inf: must be in (0, 4]"),
]


@pytest.mark.parametrize("command,argv,message", NUMERIC_FLAG_ERRORS,
                         ids=[f"{c} {' '.join(a)}" for c, a, _ in NUMERIC_FLAG_ERRORS])
def test_numeric_flags_out_of_range_are_one_line_exit_2(command, argv, message, tmp_path, capsys, monkeypatch):
    import eval as eval_script
    import viz
    from hw1.bench.cli import main as bench_main
    from hw1.cli import run

    monkeypatch.chdir(tmp_path)  # nothing may be written: the check comes before any output
    main = {"eval": eval_script.main, "viz": viz.main, "bench": bench_main}[command]
    with pytest.raises(SystemExit) as info:
        run(main, argv)
    assert info.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []
