"""The README's Python example runs as written, and the figures it shows are committed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})


def test_readme_images_are_committed():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert images, "README shows no figure"
    missing = [path for path in images if not (README.parent / path).is_file()]
    assert not missing, f"README shows images that are not in the repository: {missing}"
