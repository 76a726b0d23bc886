"""Test helper (not a test module): pause one atomic write half-way, so that a test can kill the process in the
middle of it.

:func:`install` replaces ``hieradet.checkpoint.atomic.atomic_open``, the writer behind every checkpoint and
``last_checkpoint``, with one that sleeps once, for the file named ``name``, after 64 KiB of it are written. The
library carries no test hook: a test's subprocess calls :func:`install_from_env` first (``$HIERADET_TEST_PAUSE_WRITE``
= ``"NAME:SECONDS"``), e.g. ``runpy.run_path(PATH)["install_from_env"]()`` with ``PATH`` this file.
"""

import contextlib
import os
import time

PAUSE_ENV = "HIERADET_TEST_PAUSE_WRITE"
PAUSE_AFTER_BYTES = 64 * 1024
PATH = os.path.abspath(__file__)


class _PausingFile:
    """A binary file proxy that flushes and sleeps once after :data:`PAUSE_AFTER_BYTES` bytes."""

    def __init__(self, f, seconds: float):
        self._f, self._seconds, self._written = f, seconds, 0

    def write(self, data) -> int:
        n = self._f.write(data)
        self._written += n
        if self._seconds and self._written >= PAUSE_AFTER_BYTES:
            self._f.flush()
            seconds, self._seconds = self._seconds, 0.0
            time.sleep(seconds)
        return n

    def __getattr__(self, attr):
        return getattr(self._f, attr)


def install(name: str, seconds: float) -> None:
    """Pauses the write of the file called ``name`` (a base name) for ``seconds``, once, in this process."""
    from hieradet.checkpoint import atomic

    original = atomic.atomic_open

    @contextlib.contextmanager
    def pausing_open(path, mode="wb"):
        with original(path, mode) as f:
            yield _PausingFile(f, seconds) if os.path.basename(path) == name and "b" in mode else f

    atomic.atomic_open = pausing_open


def install_from_env() -> bool:
    """:func:`install` from ``$HIERADET_TEST_PAUSE_WRITE`` (``"NAME:SECONDS"``); False when it is not set."""
    name, _, seconds = os.environ.get(PAUSE_ENV, "").rpartition(":")
    if not name:
        return False
    install(name, float(seconds))
    return True
