"""A pickled object that runs code when unpickled: what a malicious file would hold."""

from pathlib import Path


class CodeRunningPayload:
    """Unpickling this runs ``touch marker`` through ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
