"""hw1.checkpoint: what a load accepts, and no checkpoint or state dict of the package and scripts read
any way but ``torch.load(..., weights_only=True)``."""
import ast
import functools
import re

import pytest
import torch

from conftest import REPO
from hw1.checkpoint import load_checkpoint
from hw1.errors import UserError

pytestmark = pytest.mark.usefixtures("cls_one_thread")


# --- what a load accepts --------------------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("change", [{"model": [1.0]}, {"model": torch.zeros(2)}, {"model_name": ["densenet"]},
                                    {"model_config": [10, 4]}], ids=["model-list", "model-tensor", "name-list",
                                                                     "config-list"])
def test_checkpoint_fields_of_the_wrong_type(tmp_path, change):
    path = tmp_path / "odd.pth"
    torch.save({"model": {}, "model_name": "densenet", "model_config": {}, **change}, path)
    key = next(iter(change))
    with pytest.raises(UserError, match=f"not an hw1 checkpoint \\('{key}' is a ") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))



# --- every unpickling is weights_only -------------------------------------------------------------


SOURCES = sorted([*(REPO / "hw1").rglob("*.py"), *REPO.glob("*.py")])


@functools.cache
def syntax_tree(path):
    return ast.parse(path.read_text(), str(path))


def calls_named(*names):
    """``(path, ast.Call)`` of every call ``x.name(...)`` or ``name(...)`` in the package and scripts."""
    for path in SOURCES:
        for node in ast.walk(syntax_tree(path)):
            if isinstance(node, ast.Call):
                func = node.func
                if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in names:
                    yield path, node


def passes_weights_only(call):
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def where(path, call):
    return f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}"


@pytest.mark.reliability
def test_every_torch_load_is_weights_only():
    loads = [(p, c) for p, c in calls_named("load", "loads") if ast.unparse(c.func) == "torch.load"]
    assert {p.name for p, _ in loads} >= {"checkpoint.py", "weights.py"}  # the scan does find them
    assert [where(p, c) for p, c in loads if not passes_weights_only(c)] == []
    # Nothing unpickles any other way.
    unpickling = [where(p, c) for p, c in calls_named("load", "loads", "Unpickler")
                  if ast.unparse(c.func).split(".")[0] in ("pickle", "dill", "joblib", "Unpickler")]
    imports = [f"{p.relative_to(REPO)}: from torch import load" for p in SOURCES
               if re.search(r"^\s*from torch import .*\bload\b", p.read_text(), re.M)]
    assert unpickling == [] and imports == []


@pytest.mark.reliability
def test_pretrained_weights_from_the_hub_cache_load_weights_only():
    calls = list(calls_named("get_state_dict", "load_state_dict_from_url"))
    assert calls
    assert [where(p, c) for p, c in calls if not passes_weights_only(c)] == []
