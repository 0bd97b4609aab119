"""hw1.runtime: the per-CPU-kind fastest configurations behind --amp auto, --channels-last, --micro-batch."""
import pytest
import torch

from hw1 import runtime
from hw1.models import get_spec, model_names
from hw1.runtime import CPU_KINDS, amp_dtype, channels_last_default, fastest, micro_batch_default

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def kind(monkeypatch):
    """Pretend to be a CPU of the given kind."""
    def pretend(name):
        monkeypatch.setattr(runtime, "cpu_kind", lambda: name)
    return pretend


def test_every_model_has_every_cpu_kind():
    for name in model_names():
        measured = get_spec(name).fastest
        assert set(measured) == set(CPU_KINDS), name
        # no bf16 where the CPU would emulate it
        assert all(c.amp == "none" for c in measured["fp32"]), name


def test_densenet_trains_in_nchw_with_bf16_and_in_nhwc_without(kind):
    kind("avx512_bf16")
    assert channels_last_default(None, "densenet", CPU) is False
    assert channels_last_default(None, "densenet", CPU, use="infer") is True
    assert amp_dtype("auto", CPU, "densenet") is torch.bfloat16
    kind("amx")
    assert channels_last_default(None, "densenet", CPU) is False
    assert amp_dtype("auto", CPU, "densenet", use="infer") is torch.bfloat16
    kind("fp32")
    assert channels_last_default(None, "densenet", CPU) is True
    assert amp_dtype("auto", CPU, "densenet") is None


def test_flags_win_and_cuda_runs_nhwc_whole_batches(kind):
    kind("avx512_bf16")
    assert channels_last_default(True, "densenet", CPU) is True
    assert channels_last_default(False, "resnet101_fcn", CUDA) is False
    assert channels_last_default(None, "densenet", CUDA) is True
    assert amp_dtype("none", CPU, "densenet") is None and amp_dtype("bf16", CPU) is torch.bfloat16
    assert micro_batch_default(None, "densenet", CPU) == 64
    assert micro_batch_default(None, "densenet", CUDA) is None
    assert micro_batch_default(None, "convnext", CPU) is None
    assert micro_batch_default(0, "densenet", CPU) is None  # 0: whole batches
    assert micro_batch_default(16, "vgg16_fcn32s", CUDA) == 16


def test_an_unknown_model_gets_nhwc_and_bf16_only_where_the_cpu_has_it(kind):
    kind("amx")
    assert fastest("resnet18", CPU) == runtime.Fastest("bf16", True)
    kind("fp32")
    assert fastest("resnet18", CPU, use="infer") == runtime.Fastest("none", True)
    assert amp_dtype("auto", CPU) is None


def test_cpu_kind_matches_the_cpu():
    has_bf16 = torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()
    assert (runtime.cpu_kind() != "fp32") == has_bf16
    assert (runtime.cpu_kind() == "amx") == (has_bf16 and torch.cpu._is_amx_tile_supported())
