"""File I/O every format shares: tensors checked as they are read for writing, in-kernel copies, zip sniffing.

A writer trusts no source blindly: ``load_checked`` and ``blocks_checked``
hold each array to the shape and dtype it was announced with, so a wrong
loader fails naming the output and the tensor instead of writing a damaged
file. A tensor whose exact bytes lie in a file is copied file to file in
the kernel (``copy_range``) where the system can, never through Python.
``write_tensors`` lays tensors out one after another through one writer
thread (``offset_writer``). (Output files are staged and renamed into place
by ``staging``.)
"""
from __future__ import annotations

import os
import threading
import zipfile

import numpy as np

from ...errors import FormatError

ZIP_MAGIC = b"PK\x03\x04"


def load_checked(source, where: str) -> np.ndarray:
    """``source.load()`` as a C-contiguous little-endian array, checked against the shape and dtype it promised."""
    array = np.asarray(source.load())
    if tuple(array.shape) != source.shape or array.dtype.newbyteorder("=") != source.dtype.newbyteorder("="):
        raise FormatError(f"{where}: tensor {source.name!r} was announced as {source.shape} {source.dtype} but "
                          f"loaded as {tuple(array.shape)} {array.dtype}; nothing was written")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.flags.c_contiguous else array.copy(order="C")  # ascontiguousarray makes 0-d 1-d


def blocks_checked(source, where: str):
    """(first row, C-contiguous block) pairs of ``source.blocks()``, checked against its promised shape and dtype."""
    if not source.streamed:
        yield 0, load_checked(source, where)
        return
    row = 0
    for block in source.blocks():
        block = np.asarray(block)
        if block.shape[1:] != source.shape[1:] or block.dtype != source.dtype or row + len(block) > source.shape[0]:
            raise FormatError(f"{where}: tensor {source.name!r} ({source.shape} {source.dtype}) produced a block "
                              f"{tuple(block.shape)} {block.dtype} at row {row}; nothing was written")
        yield row, block if block.flags.c_contiguous else block.copy(order="C")
        row += len(block)
    if row != source.shape[0]:
        raise FormatError(f"{where}: tensor {source.name!r} ended after {row} of {source.shape[0]} rows; "
                          "nothing was written")


def write_tensors(fd: int, start: int, sources, where: str, progress=None) -> None:
    """Write ``sources`` one after another from byte ``start`` of open file ``fd``, space reserved first."""
    from .offset_writer import reserve

    placed, offset = [], start
    for s in sources:
        placed.append((s, offset))
        offset += s.nbytes
    reserve(fd, offset)
    write_placed(fd, placed, where, progress)


def write_placed(fd: int, placed, where: str, progress=None) -> None:
    """Write each (source, byte offset) of ``placed`` into open file ``fd``.

    One writer thread writes (``OffsetWriter``) while the tensors are read
    and transposed: a tensor stored unchanged is copied file to file, a
    fillable one comes in parts from the threads that transpose it, any
    other block by block.
    """
    from .offset_writer import OffsetWriter

    with OffsetWriter(fd) as out:
        for s, offset in placed:
            stored = copyable_range(s)
            if stored is not None:
                out.copy(offset, stored)
                s.check_stored()  # while the writer copies
            elif s.fillable:
                fill_at(out, s, offset, where)
            else:
                for _, block in blocks_checked(s, where):
                    out.put(offset, block)
                    offset += block.nbytes
                    del block
            if progress is not None:
                progress(s.nbytes)


class TensorSink:
    """Where a fillable tensor's parts go (``TensorSource.fill``): each is checked against the dtype and byte
    range the tensor promised, then handed to the writer; ``slot`` lends the writer's staging memory to fill."""

    def __init__(self, out, source, start: int, where: str):
        self.out, self.source, self.start, self.where = out, source, start, where
        self.written, self._lock = 0, threading.Lock()

    def slot(self, nbytes: int) -> np.ndarray:
        return self.out.slot(nbytes)

    def put(self, offset: int, part) -> None:
        part, s = np.asarray(part), self.source
        if part.dtype != s.dtype or offset < 0 or offset + part.nbytes > s.nbytes:
            raise FormatError(f"{self.where}: tensor {s.name!r} ({s.shape} {s.dtype}, {s.nbytes} bytes) produced "
                              f"a part {tuple(part.shape)} {part.dtype} at byte {offset}; nothing was written")
        self.out.put(self.start + offset, np.ascontiguousarray(part))
        with self._lock:
            self.written += part.nbytes


def fill_at(out, source, start: int, where: str) -> None:
    """Write fillable ``source`` at byte ``start`` through ``out`` (an OffsetWriter), its parts handed over by
    the threads that make them; every byte must be put exactly once (counted)."""
    sink = TensorSink(out, source, start, where)
    source.fill(sink)
    if sink.written != source.nbytes:
        raise FormatError(f"{where}: tensor {source.name!r} produced {sink.written} of its {source.nbytes} bytes; "
                          "nothing was written")


def copyable_range(source):
    """The (path, offset, nbytes) of ``source``'s stored bytes, if a writer may copy them as they are; else None."""
    return None if source.streamed else source.file_range


def copy_range(fd: int, file_range, offset: int) -> bool:
    """Copy a byte range of another file to ``offset`` in open file ``fd`` in the kernel; False where unsupported.

    A file that ends inside the range is a FormatError; a file system that
    cannot copy in the kernel returns False (the caller writes the bytes itself,
    over whatever part was copied).
    """
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    src_path, src_offset, nbytes = file_range
    try:
        with open(src_path, "rb") as src:
            done = 0
            while done < nbytes:
                n = copy(src.fileno(), fd, nbytes - done, src_offset + done, offset + done)
                if n == 0:
                    raise FormatError(f"{src_path}: ended inside the tensor bytes [{src_offset}, "
                                      f"{src_offset + nbytes})")
                done += n
    except OSError:
        return False
    return True


def copy_range_read(fd: int, file_range, offset: int, chunk: int = 8 << 20) -> None:
    """``file_range``'s bytes written at ``offset`` in open file ``fd`` through one small buffer.

    The fallback where the kernel cannot copy between the two files (another
    file system, ``/dev/shm``): the tensor is never mapped or loaded whole, so
    memory stays flat however large it is.
    """
    src_path, src_offset, nbytes = file_range
    view = memoryview(bytearray(max(1, min(chunk, nbytes))))
    with open(src_path, "rb") as src:
        done = 0
        while done < nbytes:
            n = os.preadv(src.fileno(), [view[:min(len(view), nbytes - done)]], src_offset + done)
            if n == 0:
                raise FormatError(f"{src_path}: ended inside the tensor bytes [{src_offset}, {src_offset + nbytes})")
            pwrite_all(fd, view[:n], offset + done)
            done += n


WRITE_PIECE = 256 << 10
"""Bytes per ``pwrite``. The page cache sizes the memory it takes for a write by the write's length: one
4 MiB write asks for 2 MiB blocks, whose allocation stalls on compaction once memory is fragmented (1.7 GB
written in 1.3-3.1 s on ext4 here), while 256 KiB pieces took 0.42-0.50 s, and 64 KiB pieces (what
``sendfile`` and ``splice`` use) 0.57-0.63 s."""


def pwrite_all(fd: int, data, offset: int) -> None:
    """All of ``data`` (a C-contiguous array of any shape, or a bytes-like object) written at ``offset`` in open
    file ``fd``, in pieces of ``WRITE_PIECE`` bytes."""
    view, done = memoryview(np.asarray(data).reshape(-1).view(np.uint8)), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:done + WRITE_PIECE], offset + done)


def write_in_pieces(f, data) -> None:
    """``data`` (bytes-like) written at file object ``f``'s position in pieces of ``WRITE_PIECE`` bytes: one
    large ``write`` of a tensor took 3-5x as long (see ``WRITE_PIECE``)."""
    view = memoryview(data).cast("B")
    for at in range(0, len(view), WRITE_PIECE):
        f.write(view[at:at + WRITE_PIECE])


def zip_names(path: str, head: bytes):
    """The member names of the zip archive at ``path`` (whose first bytes are ``head``), or None if it is not one."""
    if head[:4] != ZIP_MAGIC:
        return None
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
