"""MkDocs hook: the results pages of the docs, generated from ``benchmarks/results/``.

Each ``benchmarks/results/NAME.md`` becomes the page ``results/NAME.md`` as it is, followed
by the figures whose names start with ``NAME``; ``results/index.md`` lists them all. Nothing
is copied by hand, so a page can only say what its benchmark wrote.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
INTRO = """# All results

Every page here is a file of `benchmarks/results/`, written by the benchmark named in it
(`python -m benchmarks.NAME`), shown as it is. [Findings](../findings.md) reads them.

"""


def _title(text: str, name: str) -> str:
    first = text.splitlines()[0] if text else ""
    return first.lstrip("# ").strip() if first.startswith("#") else name


def results_pages() -> dict[str, str | bytes]:
    """``{path under docs: content}`` of the results pages and their figures."""
    tables = sorted(RESULTS.glob("*.md"))
    figures = sorted(RESULTS.glob("*.png"))
    pages: dict[str, str | bytes] = {}
    index = [INTRO]
    for table in tables:
        text = table.read_text()
        own = [f for f in figures if f.stem.startswith(table.stem)]
        shown = "".join(f"\n![{f.stem}]({f.name})\n" for f in own)
        if not text.startswith("#"):
            text = f"# {table.stem}\n\n{text}"
        pages[f"results/{table.name}"] = text + shown
        index.append(f"- [{_title(text, table.stem)}]({table.name}) (`{table.name}`)\n")
    for figure in figures:
        pages[f"results/{figure.name}"] = figure.read_bytes()
    pages["results/index.md"] = "".join(index)
    return pages


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path, content in results_pages().items():
        files.append(File.generated(config, path, content=content))
    return files
