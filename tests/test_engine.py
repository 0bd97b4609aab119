"""hw1.engine.train_one_epoch: micro-batches give the same optimizer step as whole batches; progress
is a bar on a terminal and plain log lines elsewhere."""
import copy
import io
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import CLS_TINY_MODEL_ARGS, REPO, make_cls_tiny
from helpers import script_env
from hw1 import engine, metrics
from hw1.schedule import CosineSchedule
from hw1.train_state import TrainState

pytestmark = pytest.mark.usefixtures("cls_one_thread")


def one_epoch(model, batches, micro_batch, **options):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = TrainState(model, optimizer, CosineSchedule(optimizer, base_lr=0.1, total_steps=len(batches)),
                       torch.amp.GradScaler("cpu", enabled=False))
    return engine.train_one_epoch(model, batches, state, criterion=nn.CrossEntropyLoss(label_smoothing=0.1),
                                  device=torch.device("cpu"), micro_batch=micro_batch, **{"progress": False, **options})


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(10, 3, 8, 8, generator=g), torch.randint(0, 5, (10,), generator=g)) for _ in range(3)]


@pytest.mark.parametrize("micro_batch", [1, 3, 4, 10])
def test_micro_batches_give_the_whole_batch_step(micro_batch):
    # no batch norm: chunks change nothing but rounding (uneven chunks of 10 included)
    torch.manual_seed(0)
    whole = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double()
    chunked = copy.deepcopy(whole)
    batches = [(x.double(), y) for x, y in data()]
    a, b = one_epoch(whole, batches, None), one_epoch(chunked, batches, micro_batch)
    for p, q in zip(whole.parameters(), chunked.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-10) and a["acc"] == b["acc"]


def test_micro_batches_normalise_per_chunk():
    # with batch norm the chunks are normalised on their own statistics: a different step
    torch.manual_seed(0)
    whole = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    chunked = copy.deepcopy(whole)
    one_epoch(whole, data(), None)
    one_epoch(chunked, data(), 5)
    assert not torch.allclose(whole[1].running_mean, chunked[1].running_mean)


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.reliability
@pytest.mark.parametrize("stderr", [Terminal, io.StringIO], ids=["terminal", "log-file"])
def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(stderr, monkeypatch, caplog):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    monkeypatch.setattr(sys, "stderr", stderr())
    with caplog.at_level("INFO", logger="hw1.engine"):
        one_epoch(model, data() * 2, None, progress=True, epoch=7, log_every=1, line_every=2)
    written = sys.stderr.getvalue()
    if stderr is Terminal:
        assert "\r" in written and "epoch 7" in written and caplog.messages == []
    else:  # one plain line every 2 steps but the last (the epoch's own line is the trainer's)
        assert written == ""
        assert [m.split("  loss")[0] for m in caplog.messages] == ["epoch 7  step 2/6", "epoch 7  step 4/6"]


# --- a log that is not a terminal, in a real process ----------------------------------------------


@pytest.mark.reliability
def test_a_log_that_is_not_a_terminal_gets_lines_not_bars(tmp_path):
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


class Counting(nn.Module):
    """A classifier that counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)), 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_evaluate_with_tta_runs_two_forward_passes_a_batch():
    # the plain forward (which gives the loss) is one of the two that TTA averages
    batches = data()
    model = Counting()
    plain = engine.evaluate(model, batches, num_classes=5, summarize=metrics.cls_summary, criterion=nn.CrossEntropyLoss(),
                            device=torch.device("cpu"))
    assert model.calls == len(batches)
    model.calls = 0
    tta = engine.evaluate(model, batches, num_classes=5, summarize=metrics.cls_summary, criterion=nn.CrossEntropyLoss(),
                          device=torch.device("cpu"), tta=True)
    assert model.calls == 2 * len(batches)
    assert tta["loss"] == plain["loss"]
    with torch.inference_mode():
        expected = torch.cat([(model(x).softmax(1) + model(x.flip(-1)).softmax(1)).argmax(1) for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    assert tta["cm"].trace() == (expected == targets).sum()
