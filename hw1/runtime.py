"""Device, mixed precision, seeding and logging: the few choices every entry point makes the same way."""
import logging
import os
import random

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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def cpu_has_fast_bf16():
    # Without AVX512-BF16 or AMX, oneDNN emulates bf16 and autocast makes the CPU slower, not faster.
    return torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()


def amp_dtype(mode, device):
    """The autocast dtype for ``--amp {auto,bf16,fp16,none}``; None means full fp32."""
    if mode == "none":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def channels_last_default(flag, model_name, device):
    """``--channels-last`` as given, or (None) the faster memory format for training ``model_name``.

    NHWC everywhere except DenseNet on the CPU: its per-layer channel concatenations are strided
    copies in NHWC, and ``python -m hw1.bench`` measured DenseNet-BC-100 (k 24) bf16 training at
    24.0 img/s in NCHW against 19.4 in NHWC on 2 cores (results/bench_cpu.json; inference still
    prefers NHWC).
    """
    if flag is not None:
        return flag
    return not (model_name == "densenet" and device.type == "cpu")


def micro_batch_default(flag, model_name, device):
    """``--micro-batch`` as given (0: whole batches), or (None) the faster size for training ``model_name``.

    DenseNet on the CPU: chunks of 64. Its concatenated 32x32 feature maps then stay in the caches;
    DenseNet-BC-100 (k 24) bf16 trained at 24.0 img/s in batches of 64 against 18.2 in batches of
    128 on 2 cores (results/bench_cpu*.json). Elsewhere a batch runs whole.
    """
    if flag is not None:
        return flag or None
    return 64 if model_name == "densenet" and device.type == "cpu" else None


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(level=logging.INFO):
    """Log to stderr; under torchrun only rank 0 logs below WARNING, so the log reads as one run's."""
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
