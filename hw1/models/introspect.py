"""What a model is made of: its stages, each stage's output shape and parameter count, as rows
that ``viz.py arch`` prints as a table and :func:`hw1.plots.arch_figure` draws."""
import torch

from hw1.models.spec import generic_stages


def _count(modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def model_stages(model, spec=None):
    """``[(name, description, [modules]), ...]``: the model's top-level stages, in forward order.

    The model's spec (:class:`hw1.models.spec.ModelSpec`) lists them; a spec without ``stages``
    (or no spec) falls back to the model's top-level children. The output shape of a stage is the
    output of its last module; its parameters are those of all its modules. Every parameter of the
    model belongs to exactly one stage.
    """
    return (spec.stages if spec is not None and spec.stages else generic_stages)(model)


def model_summary(model, input_size, spec=None):
    """Rows ``(name, description, output shape (C, H, W) or (D,), params)`` for a (1, 3, S, S) input.

    The forward pass runs on the meta device (shapes only, no arithmetic), so even the 512x512
    FCN-ResNet101 costs nothing; parameters are counted before the move. The last row is the
    model's output.
    """
    stages = model_stages(model, spec)
    counted = sum(_count(mods) for _, _, mods in stages)
    total = _count([model])
    if counted != total:
        raise AssertionError(f"stages hold {counted} of {total} parameters")
    shapes = {}
    hooks = [mods[-1].register_forward_hook(
        lambda m, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        for name, _, mods in stages]
    meta = model.to("meta").eval()
    try:
        with torch.no_grad():
            out = meta(torch.empty(1, 3, input_size, input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    out = out["out"] if isinstance(out, dict) else out
    rows = [(name, desc, shapes.get(name), _count(mods)) for name, desc, mods in stages]
    return rows + [("output", "logits", tuple(out.shape[1:]), 0)], total


def format_params(n):
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K" if n >= 1e3 else str(n)


def format_shape(shape):
    return "-" if shape is None else " x ".join(str(s) for s in shape)


def summary_table(rows, total, input_size):
    """The printed table: layer, description, output shape, params, then the total."""
    header = ("layer", "what it does", "output shape", "params")
    lines = [("input", "RGB image", f"3 x {input_size} x {input_size}", "")]
    lines += [(n, d, format_shape(s), format_params(p) if p else "") for n, d, s, p in rows]
    lines.append(("total", "", "", f"{format_params(total)} ({total:,})"))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(4)]

    def fmt(row):  # text columns left-aligned, the parameter column right-aligned
        return "  ".join(f"{v:<{w}}" if i < 3 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in lines])
