"""What keeps a run folder safe while a run writes to it: one writer at a time, no stale
temporary files, and a graceful stop on ``SIGTERM`` and ``SIGINT``.

- :func:`exclusive_run_folder` holds an exclusive ``flock`` on the folder itself (no lock file
  is left behind); a second writer is refused with a clear error. The lock goes with the
  process, so a killed run never leaves the folder locked.
- :func:`remove_stale_temporaries` deletes the temporary files that a kill during an atomic
  write leaves (:func:`ndm.data.atomic.atomic_write`), and no other; only the lock holder
  calls it.
- :class:`StopSignals` turns ``SIGTERM`` (sent by ``timeout``, Slurm, Docker, Kubernetes) and
  ``SIGINT`` (Ctrl-C) into a request that the training loop honours after the current step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType, TracebackType

from ndm.data.atomic import TEMPORARY_SUFFIX


@contextlib.contextmanager
def exclusive_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``run_dir`` for the duration of the block; raise
    ``ValueError`` naming it if another process holds it."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise ValueError(
                f"{run_dir} is in use by another ndm process; one run writes to a folder at a "
                "time: wait for it to stop, or choose another --run-dir"
            ) from error
        yield
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir: Path, run_files: Iterable[str]) -> None:
    """Delete the temporary files of interrupted atomic writes in ``run_dir``: those named
    with :data:`~ndm.data.atomic.TEMPORARY_SUFFIX`, and those of ``run_files`` that earlier
    versions named ``.NAME.*.tmp``. A file of the user's is never touched."""
    stale = list(run_dir.glob(f".*{TEMPORARY_SUFFIX}"))
    stale += [path for name in run_files for path in run_dir.glob(f".{name}.*.tmp")]
    for path in stale:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


class RunStopped(Exception):
    """Training stopped on a signal after writing a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        kept = f"checkpoint written at step {step}: {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {kept}")

    @property
    def exit_code(self) -> int:
        """The conventional ``128 + signal`` (130 for ``SIGINT``, 143 for ``SIGTERM``)."""
        return 128 + self.signum


class StopSignals:
    """While active (in the main thread), ``SIGTERM`` and ``SIGINT`` set :attr:`signum`
    instead of stopping the process; the previous handlers come back on exit. Elsewhere
    (another thread) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
