"""hw1.models.introspect: every model's stages, their output shapes and parameter counts."""
from hw1.models import build_model, get_spec
from hw1.models.introspect import format_params, format_shape, model_summary


def test_model_summary_shapes_of_all_models():
    """Stage-level shapes of the two large models come from a meta-device pass (no arithmetic)."""
    rows, total = model_summary(build_model("resnet101_fcn", weights="none"), 512, get_spec("resnet101_fcn"))
    assert dict((r[0], r[2]) for r in rows)["layer4"] == (2048, 64, 64)
    assert rows[-1][2] == (7, 512, 512)
    rows, _ = model_summary(build_model("convnext", weights="none"), 32, get_spec("convnext"))
    assert dict((r[0], r[2]) for r in rows)["stage4"] == (768, 7, 7)
    assert rows[-1][2] == (50,)


def test_formats():
    assert [format_params(n) for n in (12, 1_500, 1_234_567)] == ["12", "1.5 K", "1.23 M"]
    assert format_shape((3, 32, 32)) == "3 x 32 x 32" and format_shape(None) == "-"
