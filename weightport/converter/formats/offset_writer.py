"""One output file written at known offsets by one writer thread, while worker threads compute what comes next.

Buffered writes to one file take that file's lock in the kernel, so threads
writing at once mostly wait for each other (spinning, on a small machine);
here one thread writes and the transposing workers hand it their parts in
staging slots, and go on with the next ones. Slots are written with
``pwrite`` in pieces (``fileio.WRITE_PIECE``, the size the page cache
handles fastest); bytes stored unchanged in another file are copied there
by ``copy_file_range``.
"""
from __future__ import annotations

import errno
import os
import queue
import threading

import numpy as np

from ...mappings.fast_transpose import PART_BYTES
from .fileio import copy_range, copy_range_read, pwrite_all

SLOT_BYTES = PART_BYTES  # one transposed part; a larger one is written by the thread that made it


def reserve(fd: int, nbytes: int) -> None:
    """Allocate the file's ``nbytes`` up front: a full disk fails (ENOSPC) before any tensor is written, and
    ext4 skips its per-page delayed-allocation bookkeeping (a fifth of its write cost, measured). Nothing
    happens where the system or file system cannot."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None or nbytes <= 0:
        return
    try:
        allocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in _SPACE_ERRORS:
            raise


_SPACE_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG}


class OffsetWriter:
    """Writes byte ranges of open file ``fd`` from one thread, in the order they are handed over.

    ``slot(nbytes)`` lends a staging buffer (blocking while all are in
    flight); ``put(offset, part)`` hands a part over: one in a lent slot is
    queued, any other is written at once by the calling thread. ``copy``
    queues a file-to-file copy. Use it as a context manager: leaving waits
    for every queued write and raises the first write error.
    """

    def __init__(self, fd: int, slots: int = 6):
        self.fd = fd
        memory = np.empty(slots * SLOT_BYTES, np.uint8)
        self._slots = [memory[k * SLOT_BYTES:(k + 1) * SLOT_BYTES] for k in range(slots)]
        self._base = memory.__array_interface__["data"][0]
        self._free: queue.Queue = queue.Queue()
        for k in range(slots):
            self._free.put(k)
        self._todo: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="weightport-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> "OffsetWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None and self._error is None:
            self._error = exc  # the file is abandoned: what is still queued is not written
        self._todo.put(None)
        self._thread.join()
        self._slots = []
        if kind is None and self._error is not None:
            raise self._error

    def slot(self, nbytes: int) -> np.ndarray:
        """``nbytes`` of a free staging buffer for ``put`` (plain memory when larger than a slot)."""
        self._raise_failed()
        if nbytes > SLOT_BYTES:
            return np.empty(nbytes, np.uint8)
        return self._slots[self._free.get()][:nbytes]

    def put(self, offset: int, part) -> None:
        """Write C-contiguous ``part`` at byte ``offset``: queued if it lies in a lent slot, else now."""
        self._raise_failed()
        part = np.asarray(part)
        at = self._slot_offset(part)
        if at is None:
            pwrite_all(self.fd, part, offset)
        else:
            self._todo.put((self._write_slot, (offset, at, part.nbytes)))

    def copy(self, offset: int, file_range) -> None:
        """Queue a copy of ``file_range`` (path, offset, nbytes) of another file to ``offset``."""
        self._raise_failed()
        self._todo.put((_copy_range, (self.fd, file_range, offset)))

    def _slot_offset(self, part: np.ndarray):
        """Where ``part`` starts in the staging memory, if it lies in a slot, else None."""
        if not self._slots or not part.flags.c_contiguous:
            return None
        at = part.__array_interface__["data"][0] - self._base
        inside = 0 <= at and at % SLOT_BYTES + part.nbytes <= SLOT_BYTES and at < len(self._slots) * SLOT_BYTES
        return at if inside else None

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        for job in iter(self._todo.get, None):
            write, args = job
            if self._error is None:
                try:
                    write(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, in its thread
                    self._error = exc
            if write == self._write_slot:
                self._free.put(args[1] // SLOT_BYTES)  # even after an error: no worker waits for ever

    def _write_slot(self, offset: int, at: int, nbytes: int) -> None:
        slot = self._slots[at // SLOT_BYTES]
        pwrite_all(self.fd, slot[at % SLOT_BYTES:at % SLOT_BYTES + nbytes], offset)


def _copy_range(fd: int, file_range, offset: int) -> None:
    if not copy_range(fd, file_range, offset):  # another file system: through a small buffer
        copy_range_read(fd, file_range, offset)
