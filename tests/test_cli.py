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
