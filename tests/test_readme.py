import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2  # exactly two set-up commands at the top
    install_and_figure, install_and_test = block
    assert "pip install" in install_and_figure and "experiments" in install_and_figure
    assert "pip install" in install_and_test and "pytest" in install_and_test
    ci = open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
    assert install_and_test in ci


def test_the_worked_examples_line_counts_are_true():
    """docs/architecture.md's worked examples say how long each model file is: keep it true."""
    text = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    claims = re.findall(r"`(ufm/models/\w+\.py)` \(it exists: read it; (\d+) lines|"
                        r"`(ufm/models/\w+\.py)` \((\d+) lines", text)
    found = [(a or c, int(b or d)) for a, b, c, d in claims]
    assert len(found) >= 3, found
    for path, lines in found:
        with open(os.path.join(ROOT, path)) as fh:
            assert sum(1 for _ in fh) == lines, path
