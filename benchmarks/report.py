"""The one way every benchmark reports: print its markdown, and keep it in a file if asked."""

from __future__ import annotations

from pathlib import Path


def report(text: str, out: Path | str | None) -> None:
    """Print ``text`` and, when ``out`` is given, write it there (folders created)."""
    print(text, flush=True)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
