"""The README's first commands: what a newcomer types first is the set-up (install + demo) and the tests."""
import re

import pytest

from conftest import REPO


@pytest.mark.reliability
def test_the_first_commands_set_up_and_test():
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    assert blocks[0].splitlines() == [
        "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python train_cls.py --demo",
        ".venv/bin/python -m pytest -q",
    ]
    # grading as the course does comes just below
    assert blocks[1].startswith("bash hw1_1.sh hw1_data/p1_data/val_50 pred.csv && .venv/bin/python eval.py")
