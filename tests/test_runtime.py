"""hw1.runtime: the per-CPU-kind fastest configurations behind --amp auto, --channels-last, --micro-batch."""
import pytest
import torch

from hw1 import runtime
from hw1.models import model_names
from hw1.runtime import CPU_KINDS, amp_dtype, channels_last_default, fastest, micro_batch_default

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def kind(monkeypatch):
    """Pretend to be a CPU of the given kind."""
    def pretend(name):
        monkeypatch.setattr(runtime, "cpu_kind", lambda: name)
    return pretend


def test_every_model_has_every_cpu_kind():
    assert set(runtime.MEASURED) == set(model_names())
    for name in model_names():
        measured = runtime.MEASURED[name]
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


def test_cpu_kind_matches_the_cpu(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    has_bf16 = torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported()
    assert (runtime.cpu_kind() != "fp32") == has_bf16
    assert (runtime.cpu_kind() == "amx") == (has_bf16 and torch.cpu._is_amx_tile_supported())


@pytest.mark.parametrize("cap, kind", [("AVX2", "fp32"), ("avx512_core", "fp32"), ("AVX512_CORE_BF16", "avx512_bf16"),
                                       ("ALL", None), ("AVX512_CORE_AMX", None)])
def test_cpu_kind_obeys_onednns_isa_cap(monkeypatch, cap, kind):
    # ONEDNN_MAX_CPU_ISA makes oneDNN run as an older CPU: the defaults must follow, or bf16 would be
    # chosen where oneDNN then emulates it
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = runtime.cpu_kind()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    if native == "fp32":  # a CPU without bf16 stays without it whatever the cap
        assert runtime.cpu_kind() == "fp32"
    elif kind is None:
        assert runtime.cpu_kind() == native
    else:
        assert runtime.cpu_kind() == kind


def test_cpu_model_gives_family_and_model_numbers(monkeypatch, tmp_path):
    # "model" is also the start of "model name": each field is read by its whole key
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n")
    real = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: info if str(p) == "/proc/cpuinfo" else real(p))
    assert runtime.cpu_model() == "AMD EPYC (family 26 model 2)"
    assert runtime.cpu_flags() == ["avx2", "avx512_bf16"]
