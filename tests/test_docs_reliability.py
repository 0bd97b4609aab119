"""docs/reliability.md and the ``reliability`` marker list the same tests: each case the page names
exists and is marked, and each marked test is named on the page (``pytest -m reliability`` runs
exactly the page's cases)."""
import re

from conftest import REPO

TESTS = REPO / "tests"


def marked_tests():
    """``{"file.py::test"}`` of the tests marked ``reliability`` (by decorator or a module-wide mark)."""
    found = set()
    for path in TESTS.glob("test_*.py"):
        text = path.read_text()
        module_wide = re.search(r"^pytestmark = .*pytest\.mark\.reliability", text, re.M) is not None
        for match in re.finditer(r"((?:^@.*\n(?:^[ \t)\]].*\n)*)*)^def (test_\w+)\(", text, re.M):
            if module_wide or "pytest.mark.reliability" in match.group(1):
                found.add(f"{path.name}::{match.group(2)}")
    return found


def test_the_page_and_the_marker_name_the_same_tests():
    named = set(re.findall(r"`(test_\w+\.py::test_\w+)`", (REPO / "docs" / "reliability.md").read_text()))
    marked = marked_tests()
    assert named - marked == set(), "named on the page but not marked (or missing)"
    assert marked - named == set(), "marked but not named on the page"
