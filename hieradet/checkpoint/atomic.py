"""Crash-safe file writes: a file killed mid-write never appears under its final name.

:func:`atomic_open` writes to a hidden temporary file in the destination folder (``.NAME.PID.RANDOM.partial``),
flushes and ``fsync``\\ s it, then renames it over ``NAME`` (``os.replace``, atomic on POSIX file systems) and
``fsync``\\ s the folder. A ``kill -9`` at any moment leaves either the old file (or none) or the complete new one,
plus at most a stray ``*.partial`` file, which :func:`remove_partial_files` deletes (``--resume`` does).

* :class:`AtomicSaveMixin` gives a detectron2 ``Checkpointer`` this behaviour for ``model_*.pth`` and
  ``last_checkpoint`` (``HieraDetCheckpointer`` inherits it).
* :func:`atomic_torch_save` is ``torch.save`` through :func:`atomic_open` (converted checkpoints, results files).
* :class:`AtomicJSONWriter` is detectron2's ``JSONWriter`` writing every ``metrics.json`` line with one
  ``os.write`` on an ``O_APPEND`` descriptor, then ``fsync``: a line is either all there or absent; a torn last
  line left by an older writer is cut off when the file is reopened.
"""

import contextlib
import json
import logging
import os
import uuid
from collections import defaultdict
from typing import IO, Any, Iterator

import torch
from detectron2.utils.events import JSONWriter, get_event_storage

__all__ = [
    "AtomicJSONWriter",
    "AtomicSaveMixin",
    "PARTIAL_SUFFIX",
    "atomic_open",
    "atomic_torch_save",
    "remove_partial_files",
]

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file next to ``path`` for writing; on a clean exit of the ``with`` block it is flushed,
    ``fsync``-ed and renamed to ``path``; on an exception it is deleted and ``path`` is left untouched.

    Args:
        path (str): final file name (its folder must exist).
        mode (str): ``"wb"`` or ``"w"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_open`: ``path`` is complete or not there."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def remove_partial_files(folder: str) -> list:
    """Deletes the temporary files :func:`atomic_open` leaves when a process is killed mid-write; returns their
    paths. Call it only when no other process writes into ``folder``."""
    removed = []
    if not folder or not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    if removed:
        logger.info("removed %d incomplete file(s) left by a killed run: %s", len(removed), removed)
    return removed


class AtomicSaveMixin:
    """Checkpointer mixin: ``save`` writes ``NAME.pth`` and then ``last_checkpoint`` with :func:`atomic_open`,
    and ``resume_or_load(resume=True)`` first removes the temporary files of a killed save (in the process that
    saves, ``save_to_disk``).

    Put it after the checkpointer's own class and before detectron2's, e.g.
    ``class HieraDetCheckpointer(AtomicSaveMixin, DetectionCheckpointer)``: a subclass ``save`` that adds data
    and calls ``super().save(name, **extra)`` then reaches this one, which does the writing.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must not contain a folder")
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.save_dir and self.save_to_disk:  # the writing (main) process only
            remove_partial_files(self.save_dir)
        return super().resume_or_load(path, resume=resume)


class AtomicJSONWriter(JSONWriter):
    """detectron2's ``JSONWriter`` (the same ``metrics.json`` lines) with whole-line appends.

    Args:
        json_file (str): path of the file to append to.
        window_size (int): median-smoothing window of the scalars that ask for smoothing (detectron2's).
    """

    def __init__(self, json_file: str, window_size: int = 20):
        # not JSONWriter.__init__: it opens a buffered handle, which may flush half a line
        self._window_size = window_size
        self._last_write = -1
        self._fd = os.open(json_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._cut_torn_line(json_file)

    def _cut_torn_line(self, json_file: str) -> None:
        """Truncates a last line without its newline (an older writer killed mid-line)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(json_file, "rb") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            f.seek(0)
            keep = f.read().rfind(b"\n") + 1
        os.truncate(json_file, keep)
        logger.warning("%s ended in a torn line (a killed run); cut it off", json_file)

    def write(self):
        storage = get_event_storage()
        to_save = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr <= self._last_write:
                continue
            to_save[itr][k] = v
        if not to_save:
            return
        self._last_write = max(to_save)
        lines = "".join(json.dumps(dict(s, iteration=i), sort_keys=True) + "\n" for i, s in sorted(to_save.items()))
        data = lines.encode()
        while data:  # one write for a regular file; the loop only guards against a short write
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
