"""Device, mixed precision, seeding and logging: the few choices every entry point makes the same way."""
import contextlib
import logging
import os
import platform
import random
from pathlib import Path
from typing import NamedTuple

import torch

from hw1.errors import UserError


def get_device(name="auto"):
    """``auto`` picks CUDA when present, else the CPU; anything else is parsed by ``torch.device``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name (try cpu, cuda or cuda:1)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: hw1 runs on cpu or cuda (cuda:N), not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def cpu_kind():
    """How this CPU runs bf16, which decides its fastest configurations: ``amx``, ``avx512_bf16`` or ``fp32``.

    ``fp32``: no bf16 instructions (AVX2 and older, non-x86): oneDNN emulates bf16 and autocast
    makes the CPU slower, not faster.

    oneDNN's own cap, ``ONEDNN_MAX_CPU_ISA`` (or its older name ``DNNL_MAX_CPU_ISA``), is obeyed:
    with ``AVX2`` oneDNN runs as on an AVX2-only CPU, bf16 emulated, so the kind is ``fp32``;
    with ``AVX512_CORE_BF16`` (the AMX workaround, shared/notes) ``avx512_bf16``.
    """
    if not (torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()):
        return "fp32"
    kind = "amx" if torch.cpu._is_amx_tile_supported() else "avx512_bf16"
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if cap == "ALL" or "AMX" in cap:  # AVX512_CORE_AMX, AVX10_1_512_AMX(_FP16): all the CPU has
        return kind
    # ISAs that hold bf16 instructions: AVX512_CORE_BF16, AVX512_CORE_FP16, AVX10_1_512
    return "avx512_bf16" if cap in ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512") else "fp32"


def cpu_has_fast_bf16():
    return cpu_kind() != "fp32"


class Fastest(NamedTuple):
    """The fastest configuration of one model on one kind of CPU, for training or for inference."""
    amp: str  # "bf16" or "none"
    channels_last: bool
    micro_batch: int | None = None  # training only: chunks of a batch of the recipe's size


BF16_NCHW, BF16_NHWC = Fastest("bf16", False), Fastest("bf16", True)
FP32_NCHW, FP32_NHWC = Fastest("none", False), Fastest("none", True)
CPU_KINDS = ("amx", "avx512_bf16", "fp32")

# {model: {CPU kind: (training, inference)}}, each chosen from `python -m hw1.bench` runs on such a
# CPU (2 cores); docs/performance.md has the table with the numbers. A kind or model without a
# measurement of its own gets NHWC with whole batches (bf16 where the CPU has it).
MEASURED = {
    # DenseNet's per-layer concatenations are strided copies in NHWC, which bf16 training paid for on
    # AVX512-BF16 and AMX with DenseNet-BC-100 k=12 (NCHW 24.0 vs NHWC 19.4 img/s, results/bench_cpu.json;
    # 31.8 vs 10.0 on AMX), while in fp32 NHWC's faster convolutions win (6.60 vs 4.66,
    # results/bench_cpu_avx2_densenet.json); micro-batches of 64 keep the concatenated maps in the
    # caches. --recipe cpu's BC-52 k=24 pooled trains faster in NHWC and sets it itself. Inference
    # has no backward pass: NHWC wins it on the bf16 CPUs.
    "densenet": {"amx": (Fastest("bf16", False, 64), BF16_NHWC), "avx512_bf16": (Fastest("bf16", False, 64), BF16_NHWC),
                 "fp32": (Fastest("none", True, 64), FP32_NHWC)},
    # results/bench_cpu.json, results/bench_cpu_avx2_others.json
    "convnext": {"amx": (BF16_NHWC, BF16_NHWC), "avx512_bf16": (BF16_NHWC, BF16_NHWC), "fp32": (FP32_NCHW, FP32_NHWC)},
    # VGG16-FCN as --recipe cpu builds it: bf16 NHWC 29.4 img/s against 17.8 NCHW on AMX
    # (results/bench_cpu_amx_p2.json), 29.4 against 23.2 on an AVX512-BF16 EPYC (results/bench_cpu_avx512_p2.json)
    "vgg16_fcn32s": {"amx": (BF16_NHWC, BF16_NHWC), "avx512_bf16": (BF16_NHWC, BF16_NHWC),
                     "fp32": (FP32_NCHW, FP32_NHWC)},
    "resnet101_fcn": {"amx": (BF16_NHWC, BF16_NHWC), "avx512_bf16": (BF16_NHWC, BF16_NHWC),
                      "fp32": (FP32_NHWC, FP32_NCHW)},
}
MEASURED["vgg16_fcn8s"] = MEASURED["vgg16_fcn32s"]  # the same trunk, two small heads more


def fastest(model_name, device, use="train"):
    """The measured fastest :class:`Fastest` of ``model_name`` for ``use`` ("train" or "infer") on ``device``:
    ``MEASURED[model_name][cpu kind]``, measured with ``python -m hw1.bench``.

    On CUDA: bf16 (fp16 where bf16 is missing, see :func:`amp_dtype`) in NHWC, whole batches.
    A model without a measurement for this kind of CPU gets NHWC with whole batches (bf16 where the
    CPU has it).
    """
    kind = cpu_kind() if device.type == "cpu" else "cuda"
    fallback = BF16_NHWC if kind != "fp32" else FP32_NHWC
    train, infer = MEASURED.get(model_name, {}).get(kind, (fallback, fallback))
    return train if use == "train" else infer


def amp_dtype(mode, device, model_name=None, use="train"):
    """The autocast dtype for ``--amp {auto,bf16,fp16,none}``; None means full fp32.

    ``auto``: on CUDA bf16 where supported, else fp16; on the CPU the measured fastest for
    ``model_name`` (bf16 only where the CPU has bf16 instructions).
    """
    if mode == "none":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return None
    return torch.bfloat16 if fastest(model_name, device, use).amp == "bf16" else None


def channels_last_default(flag, model_name, device, use="train"):
    """``--channels-last`` as given, or (None) the measured faster memory format of ``model_name``."""
    if flag is not None:
        return flag
    return fastest(model_name, device, use).channels_last


def micro_batch_default(flag, model_name, device):
    """``--micro-batch`` as given (0: whole batches), or (None) the measured faster size for training."""
    if flag is not None:
        return flag or None
    return fastest(model_name, device).micro_batch


def autocast(device, dtype):
    """Autocast to ``dtype`` on ``device`` (a device or its type); None runs in full precision.

    A no-op on the meta device (the shape-only passes of the architecture figure), which has no
    autocast state to set.
    """
    device_type = getattr(device, "type", device)
    if device_type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(level=logging.INFO):
    """Log to stderr; under torchrun only rank 0 logs below WARNING, so the log reads as one run's."""
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def cpu_cores():
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpuinfo(field):
    """The value of the first ``field`` line of /proc/cpuinfo, or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model():
    """The CPU's model name from /proc/cpuinfo with its family and model numbers (virtual CPUs are
    often named only "AMD EPYC" or "Intel(R) Xeon(R) Processor", which cover generations whose
    speeds differ twofold), or the processor type where there is no /proc/cpuinfo."""
    name = _cpuinfo("model name")
    if name is None:
        return platform.processor() or platform.machine()
    family, model = _cpuinfo("cpu family"), _cpuinfo("model")
    return f"{name} (family {family} model {model})" if family and model else name


def cpu_flags():
    """The CPU's vector and matrix extensions that decide its fastest configuration, from /proc/cpuinfo."""
    return sorted(f for f in (_cpuinfo("flags") or "").split() if f.startswith(("avx", "amx", "fma")))


def device_name(device):
    """The GPU's name, or the CPU's model, kind, cores and torch's threads, for a run's records.

    The kind (amx, avx512_bf16, fp32) is in it because one model name ("Intel(R) Xeon(R) Processor")
    covers virtual CPUs with and without AMX, whose speeds differ several-fold.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {cpu_kind()}, {cpu_cores()} cores, {torch.get_num_threads()} threads)"
