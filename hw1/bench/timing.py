"""Timing and FLOP counting: medians of timed calls, forward FLOPs, and the machine's matmul peak."""
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device):
    """Wait for the work queued on a CUDA ``device``, so that a timer around it measures it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, *, warmup=1, repeats=5, device=None):
    """Seconds of each of the ``warmup + repeats`` calls of ``fn()``, in order (CUDA synchronised)."""
    times = []
    for _ in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_fn(fn, *, warmup=1, repeats=5, device=None):
    """Median seconds of one call of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    return statistics.median(time_runs(fn, warmup=warmup, repeats=repeats, device=device)[warmup:])


def count_flops(model, example):
    """Forward FLOPs of ``model(example)`` for the whole batch (a multiply-add counts 2).

    Runs on meta tensors of the model's shapes, so it costs no compute and leaves the model as it was.
    It runs in eval mode: a batch norm in training mode refuses one image whose map is down to 1x1.
    """
    meta = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            torch.func.functional_call(model, meta, (example.to("meta"),))
    finally:
        model.train(training)
    return counter.get_total_flops()


def matmul_peak(dtype, *, device, n=2048, repeats=5):
    """FLOP/s of an (n, n) @ (n, n) matmul in ``dtype``: the median of ``repeats`` timed loops."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    out = torch.empty_like(a)
    inner = 20 if device.type == "cuda" else 1  # a GPU matmul takes ~1 ms: loop so launch gaps do not count
    seconds = time_fn(lambda: [torch.mm(a, b, out=out) for _ in range(inner)], warmup=2, repeats=repeats,
                      device=device)
    return 2 * n ** 3 * inner / seconds


def spread(times):
    """(max - min) / median of the timed calls: how noisy the median is."""
    return (max(times) - min(times)) / statistics.median(times)
