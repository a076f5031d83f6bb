"""The host's available memory, and a refusal, with the size needed, of what would not fit.

A size that cannot be allocated (a billion toy points, a batch of four billion, a layer of
a hundred thousand units) is refused before anything is built, with one line giving the
bytes it needs, instead of an allocator's traceback or the kernel's out-of-memory killer.
"""

from __future__ import annotations

from pathlib import Path

GIB = 2**30


def available_bytes() -> int | None:
    """The memory the host can give without swapping (Linux's ``MemAvailable``), or
    ``None`` where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require_memory(what: str, needed: int) -> None:
    """Raise ``ValueError`` when ``needed`` bytes for ``what`` exceed the available memory."""
    available = available_bytes()
    if available is not None and needed > available:
        raise ValueError(
            f"{what} needs {needed / GIB:.1f} GiB, more than the {available / GIB:.1f} GiB of "
            "memory available"
        )
