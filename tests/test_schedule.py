"""hw1.schedule: the warm-up + cosine formula at its landmarks, and the resumable wrapper."""
import math

import pytest
import torch

from hw1.schedule import CosineSchedule, cosine_lr


def expected_lr(step, base_lr, total, warmup, min_lr):
    """The schedule written out independently: linear warm-up from base/warmup, then half a cosine."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = min(step - warmup, total - warmup) / (total - warmup)
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("warmup, min_lr", [(0, 0.0), (0, 1e-3), (10, 0.0), (10, 1e-3)])
def test_landmarks(warmup, min_lr):
    base, total = 0.1, 110
    lr = lambda s: cosine_lr(s, base_lr=base, total_steps=total, warmup_steps=warmup, min_lr=min_lr)  # noqa: E731
    if warmup:
        assert lr(0) == pytest.approx(base / warmup)
        assert lr(warmup - 1) == pytest.approx(base)  # end of warm-up: the peak
        assert lr(warmup // 2) == pytest.approx(base * (warmup // 2 + 1) / warmup)
    else:
        assert lr(0) == pytest.approx(base)
    middle = warmup + (total - warmup) // 2
    assert lr(middle) == pytest.approx((base + min_lr) / 2)
    assert lr(total - 1) == pytest.approx(expected_lr(total - 1, base, total, warmup, min_lr))
    assert min_lr < lr(total - 1) < min_lr + 1e-4
    assert lr(total) == pytest.approx(min_lr)
    assert lr(total + 50) == pytest.approx(min_lr)  # stays there
    for step in range(total + 5):
        assert lr(step) == pytest.approx(expected_lr(step, base, total, warmup, min_lr), abs=1e-12), step


def test_monotone_after_warmup():
    lrs = [cosine_lr(s, base_lr=1.0, total_steps=50, warmup_steps=5, min_lr=0.1) for s in range(50)]
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5]))
    assert lrs[4] == lrs[5] == 1.0  # the last warm-up step and the cosine's start are both the peak
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert max(lrs) == pytest.approx(1.0) and min(lrs) > 0.1


def _optimizer():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=123.0)


def test_sets_every_param_group():
    opt = _optimizer()
    kwargs = dict(base_lr=0.5, total_steps=20, warmup_steps=4, min_lr=0.01)
    sched = CosineSchedule(opt, **kwargs)
    for step in range(25):
        want = expected_lr(step, 0.5, 20, 4, 0.01)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([want, want]), step
        assert sched.get_last_lr() == pytest.approx(want)
        sched.step()


def test_state_dict_resume_continues_identically():
    kwargs = dict(base_lr=0.2, total_steps=30, warmup_steps=3, min_lr=0.0)
    opt = _optimizer()
    sched = CosineSchedule(opt, **kwargs)
    reference = []
    for _ in range(30):
        sched.step()
        reference.append(opt.param_groups[0]["lr"])

    opt = _optimizer()
    sched = CosineSchedule(opt, **kwargs)
    for _ in range(12):
        sched.step()
    state = sched.state_dict()
    assert state["last_step"] == 12

    opt2 = _optimizer()
    resumed = CosineSchedule(opt2, base_lr=9.0, total_steps=5)  # wrong settings, replaced by the state
    resumed.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == [reference[11]] * 2  # applied on load
    continued = []
    for _ in range(18):
        resumed.step()
        continued.append(opt2.param_groups[1]["lr"])
    assert continued == reference[12:]


def test_a_groups_lr_scale_multiplies_the_schedule():
    w, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [b], "lr_scale": 64.0}], lr=1.0)
    sched = CosineSchedule(opt, base_lr=0.1, total_steps=10, warmup_steps=2)
    for step in range(12):
        want = expected_lr(step, 0.1, 10, 2, 0.0)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([want, 64 * want]), step
        sched.step()


@pytest.mark.parametrize("no_wd_norm", [False, True])
def test_bn_bias_lr_puts_the_batch_norm_biases_in_a_group_of_their_own(no_wd_norm):
    from hw1.models import build_model
    from hw1.train_state import param_groups

    model = build_model("densenet", depth=10, growth_rate=4)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    plain = param_groups(model, 5e-4, no_wd_norm)
    assert len(plain) == 1 + no_wd_norm and all("lr_scale" not in g for g in plain)
    groups = param_groups(model, 5e-4, no_wd_norm, bn_bias_lr=64.0)
    *rest, fast = groups
    assert {id(p) for p in fast["params"]} == {id(m.bias) for m in norms} and fast["lr_scale"] == 64.0
    assert fast["weight_decay"] == (0.0 if no_wd_norm else 5e-4)
    # every trainable parameter in exactly one group, the rest as without the flag
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    assert [g["weight_decay"] for g in rest] == [g["weight_decay"] for g in plain]
