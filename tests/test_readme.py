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
