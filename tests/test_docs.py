"""The README and the documentation say what the code does: the front page is short and
quotes only committed results, every Python block runs, every shell block marked runnable
runs, and the tutorial notebook executes."""

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"
TUTORIAL = DOCS / "tutorials" / "ndm-from-scratch.ipynb"
FENCE = re.compile(r"```(\w+)\n(.*?)```", flags=re.DOTALL)
RUNNABLE = re.compile(r"<!-- runnable -->\n```bash\n(.*?)```", flags=re.DOTALL)


def _blocks(language: str) -> list[tuple[str, str]]:
    return [
        (f"{page.relative_to(ROOT)}#{k}", body)
        for page in PAGES
        for k, (lang, body) in enumerate(FENCE.findall(page.read_text()))
        if lang == language
    ]


def test_readme_is_a_front_page_with_the_two_commands_first():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:25])
    assert "make demo" in first_screen and "make test" in first_screen


def test_every_number_the_readme_quotes_is_in_a_committed_result():
    text = FENCE.sub("", README.read_text())
    text = re.sub(r"`[^`]*`", "", text)  # code, names and versions are not results
    committed = "\n".join(path.read_text() for path in RESULTS.glob("*.md"))
    tables = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    numbers = set(re.findall(r"-?\d+\.\d+", text)) | set(re.findall(r"-?\d+(?:\.\d+)?", tables))
    missing = sorted(n for n in numbers if n not in committed)
    assert numbers and not missing, f"numbers in the README that no result file holds: {missing}"


def test_every_figure_the_pages_show_is_committed():
    for page in PAGES:
        for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            # the docs' results/ pages are generated from benchmarks/results/
            where = RESULTS / path[8:] if path.startswith("results/") else page.parent / path
            assert where.is_file(), f"{page.name} shows missing {path}"


@pytest.mark.parametrize(("where", "block"), _blocks("python"), ids=lambda v: str(v)[:40])
def test_python_block_runs(where, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, where, "exec"), {"__name__": "docs"})


@pytest.mark.parametrize(
    "block",
    [body for page in PAGES for body in RUNNABLE.findall(page.read_text())],
    ids=lambda v: v.split("\n")[0][:40],
)
def test_runnable_shell_block_runs(block, tmp_path):
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in block.splitlines():
        if line.strip() and not line.startswith("#"):
            done = subprocess.run(
                shlex.split(line, comments=True), cwd=tmp_path, env=env, capture_output=True
            )
            assert done.returncode == 0, f"{line}\n{done.stderr.decode()[-2000:]}"


def test_the_tutorial_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(TUTORIAL, as_version=4)
    (training,) = [cell for cell in notebook.cells if "def fit(model, steps=3000" in cell.source]
    training.source = training.source.replace("steps=3000", "steps=300")  # runs, not results
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3")
    client.execute(cwd=str(TUTORIAL.parent))
    printed = "".join(
        out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
    )
    assert "NELBO" in printed and "entropy H" in printed


def _resolves(dotted: str) -> bool:
    """Whether ``ndm.a.b...`` names a module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_name_the_pages_give_exists():
    names = {
        name.rstrip(".")
        for page in PAGES
        for name in re.findall(r"\bndm(?:\.[A-Za-z_][A-Za-z0-9_]*)+", page.read_text())
        if not name.startswith("ndm.cli")  # run as `python -m ndm.cli`
    }
    missing = sorted(name for name in names if not _resolves(name))
    assert names and not missing, f"names in the docs that the code does not have: {missing}"


def test_every_file_and_test_the_pages_cite_exists():
    cited = {
        ref
        for page in PAGES
        for ref in re.findall(
            r"\b(?:tests|src|benchmarks|scripts)/[\w/.-]+\.py(?:::\w+)?", page.read_text()
        )
    }
    missing = []
    for ref in cited:
        path, _, test = ref.partition("::")
        if not (ROOT / path).is_file():
            missing.append(ref)
        elif test and not re.search(rf"^def {test}\(", (ROOT / path).read_text(), flags=re.M):
            missing.append(ref)
    assert cited and not missing, f"the docs cite what is not there: {sorted(missing)}"
