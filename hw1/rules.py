"""Rules for numeric values, ``(test, what the value must be)``: the training config's knobs
(:func:`hw1.config.knob`), the other commands' flags (:func:`hw1.flags.check_numbers`) and the
models' hyperparameter ranges (:class:`hw1.models.spec.ModelSpec`) state them alike."""

AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
AT_LEAST_0 = (lambda v: v >= 0, "0 or more")
ABOVE_0 = (lambda v: v > 0, "above 0")


def between(lo, hi, *, open_lo=False, open_hi=False, note=""):
    """A rule: ``lo <= value <= hi`` (``open_lo`` / ``open_hi``: strictly); ``note`` follows the range."""
    def test(v):
        return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)

    return (test, f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}{note}")
