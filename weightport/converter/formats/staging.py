"""Staging: output files appear whole or not at all, never replace what they must not, and leave nothing behind.

- Each output file is written as ``.<name>.wp-<host>-<pid>-<random>.partial`` in
  its destination folder (the same file system, so the final rename is atomic)
  and renamed into place only when every file of the output is complete.
- SIGKILL (the OOM killer) cannot be caught, so the name records the writer:
  before writing into a folder, partial files there whose writer (on this
  host) is no longer running are removed.
- SIGTERM and SIGHUP (``timeout``, job schedulers, a closed terminal) are
  handled like Ctrl-C while writing: the partial files are removed, then the
  signal takes its usual course. Handlers are installed only in the main
  thread, only over the default action, and restored afterwards; a signal
  that arrives while files are being renamed into place waits until that is done.
- Without ``overwrite``, a file is committed with a hard link, which fails if
  the name exists (even as a dangling symlink), so of two concurrent runs one
  wins and the other is refused; where the file system has no hard links, the
  existence check and the rename are as close together as they can be.
- An output that is one of the inputs (the same file, by inode) is refused
  unless ``replace_input=True``; a folder at the output name is refused.
- OS errors while writing (disk full, no permission, read-only file system,
  file too large) become ``OutputError`` saying what to do.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import threading
import uuid

from ...errors import OutputError, OutputExistsError, UsageError


def _host_name() -> str:
    """This machine's name: the kernel's node name (importing ``socket`` for it costs ~6 ms of every command)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


_HOST = hashlib.sha1(_host_name().encode("utf-8", "replace")).hexdigest()[:6]
_PARTIAL = re.compile(r"^\..*\.wp-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.partial$")
_NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOSYS,
                  getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}
_CATCH = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def partial_name(final: str) -> str:
    """The temporary name ``final`` is written under: hidden, beside it, naming this host and process."""
    folder, base = os.path.split(final)
    return os.path.join(folder, f".{base[:150]}.wp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as gone); unsure means yes."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def stale_partials(folder) -> list:
    """Partial files in ``folder`` left by a weightport writer on this host that is no longer running."""
    if os.name == "nt":  # no cheap, safe liveness check there: leave them
        return []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        m = _PARTIAL.match(name)
        if m and m["host"] == _HOST and not _running(int(m["pid"])):
            found.append(os.path.join(folder, name))
    return found


def remove_stale(folder) -> list:
    """Remove ``stale_partials(folder)``; the paths removed."""
    removed = []
    for path in stale_partials(folder):
        _remove(path)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


def _errno_of(exc: OSError):
    if exc.errno is not None:
        return exc.errno
    m = re.search(r"errno = (\d+)", str(exc))  # h5py reports HDF5's errors this way
    return int(m[1]) if m else None


def output_error(exc: OSError, final: str):
    """The OutputError for an OS error met while writing ``final``, or None if it is not one we explain."""
    folder = os.path.dirname(final) or "."
    code = _errno_of(exc)
    why = {
        errno.ENOSPC: f"no space left on the device of {folder}. Free some space there or write elsewhere",
        getattr(errno, "EDQUOT", -1): f"your disk quota on {folder} is used up. Free some space or write elsewhere",
        errno.EACCES: f"no permission to write in {folder}. Choose a folder you can write to, or change its "
                      "permissions",
        errno.EPERM: f"the system does not allow writing {final}. Choose another folder or name",
        errno.EROFS: f"{folder} is on a read-only file system. Write the output elsewhere",
        errno.EISDIR: f"{final} is a folder. Give a file name inside it",
        errno.EFBIG: "the file system (or a file-size limit, ulimit -f) refuses a file this large. Write to "
                     "another file system, or split safetensors output with shard_size=",
        errno.ENAMETOOLONG: "the name is too long for the file system. Choose a shorter one",
    }.get(code)
    if why is None:
        return None
    return OutputError(f"cannot write {final}: {why}; nothing was left behind ({exc.strerror or exc})")


def check_space(folder: str, nbytes: int) -> None:
    """Refuse before writing when ``folder``'s file system has less free space than the output needs."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise OutputError(f"cannot write into {folder}: the output needs {nbytes:,} bytes but its file system "
                          f"has {free:,} free; nothing was written. Free some space or write elsewhere")


class _Signalled(BaseException):
    """SIGTERM or SIGHUP arrived while writing; unwinds the write so its files are removed."""


class Staging:
    """Output files written under temporary names beside their destinations, renamed in only when all are done.

    Use it as a context manager: leaving it removes whatever was not
    committed, restores the signal handlers and turns OS errors into
    ``OutputError``. ``inputs`` are the files being read, which the output
    may not replace unless ``replace_input=True``.
    """

    def __init__(self, overwrite: bool = False, *, inputs=(), replace_input: bool = False):
        self.overwrite = overwrite
        self.replace_input = replace_input
        self._inputs = [os.fspath(p) for p in inputs if p]
        self._pending: list = []  # (temporary, final)
        self._obsolete: list = []  # removed once the output is committed
        self._cleaned: set = set()
        self._boxes: list = []  # partial folders and scratch files, removed when the staging ends
        self._previous: dict = {}  # signal -> the handler it had
        self._caught = None
        self._hold = False  # committing or cleaning up: a signal waits until that is done

    # -- claiming names ------------------------------------------------------------------------------------

    def file(self, final) -> str:
        """A temporary path to write ``final`` to; refuses ``final`` if it exists (unless overwriting), is a
        folder, or is one of the inputs."""
        final = os.path.abspath(os.fspath(final))
        folder = os.path.dirname(final)
        if os.path.isdir(final):
            raise OutputError(f"cannot write {final}: it is a folder; give a file name inside it")
        if not os.path.isdir(folder):
            raise UsageError(f"cannot write {final}: the folder {folder} does not exist")
        self._claim(final, folder)
        temp = partial_name(final)
        self._pending.append((temp, final))
        return temp

    def _claim(self, final: str, folder: str) -> None:
        """Refuse ``final`` (a file or a folder) if it is an input, exists (unless overwriting), is claimed
        already, or ``folder`` is not writable; clear stale partial outputs from ``folder`` once."""
        self._refuse_input(final)
        if os.path.lexists(final) and not self.overwrite:
            what = "is a symbolic link to nothing" if not os.path.exists(final) else "already exists"
            raise OutputExistsError(f"{final} {what}; nothing was written. Pass overwrite=True to replace it, "
                                    "or choose another name")
        if any(f == final for _, f in self._pending):
            raise UsageError(f"{final} would be written twice in one output")
        self._check_writable(folder, final)
        if folder not in self._cleaned:
            remove_stale(folder)
            self._cleaned.add(folder)

    def folder(self, final) -> str:
        """A temporary path to write the folder ``final`` to (an Orbax checkpoint): ``final``'s name inside a hidden
        partial folder beside it, so whatever the writer leaves there is removed with it; refused like ``file``."""
        final = os.path.abspath(os.fspath(final))
        parent = os.path.dirname(final)
        if not os.path.isdir(parent):
            raise UsageError(f"cannot write {final}: the folder {parent} does not exist")
        self._claim(final, parent)
        box = partial_name(final)
        os.mkdir(box)
        self._boxes.append(box)
        temp = os.path.join(box, os.path.basename(final))
        self._pending.append((temp, final))
        return temp

    def scratch(self, final) -> str:
        """A temporary file beside ``final`` that is never committed (a part assembled into the output), removed
        when the staging ends, whatever happens."""
        temp = partial_name(os.path.abspath(os.fspath(final)))
        self._boxes.append(temp)
        return temp

    def obsolete(self, path) -> None:
        """Remove ``path`` once the output is committed (a shard the old index listed and the new one does not)."""
        path = os.path.abspath(os.fspath(path))
        if any(f == path for _, f in self._pending):
            return
        if self._is_input(path) and not self.replace_input:
            return
        self._obsolete.append(path)

    def _is_input(self, path) -> bool:
        for source in self._inputs:
            try:
                if os.path.samefile(path, source):
                    return True
            except OSError:
                continue
        return False

    def _refuse_input(self, final) -> None:
        if self.replace_input or not os.path.exists(final) or not self._is_input(final):
            return
        raise OutputError(f"cannot write {final}: it is the input being read (the same file); nothing was "
                          "written. Write to another name, or pass replace_input=True to "
                          "replace the input with the result")

    @staticmethod
    def _check_writable(folder, final) -> None:
        try:
            if os.statvfs(folder).f_flag & os.ST_RDONLY:
                raise output_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), final)
        except (AttributeError, OSError):
            pass
        if not os.access(folder, os.W_OK | os.X_OK):
            raise output_error(OSError(errno.EACCES, os.strerror(errno.EACCES)), final)

    # -- finishing -----------------------------------------------------------------------------------------

    def commit(self) -> list:
        """Move every temporary file into place (in the order they were claimed); the final paths."""
        self._hold = True
        done = []
        try:
            for temp, final in self._pending:
                if os.path.isdir(temp):
                    _place_folder(temp, final, self.overwrite)
                elif self.overwrite:
                    os.replace(temp, final)
                else:
                    _place_new(temp, final)
                done.append(final)
        except BaseException:
            if not self.overwrite:  # the names placed so far were free: they are ours to take back
                for final in done:
                    _remove(final)
            raise
        finally:
            self._hold = False
        self._pending = []
        self._remove_boxes()
        for path in self._obsolete:
            _remove(path)
        self._obsolete = []
        return done

    def discard(self) -> None:
        """Remove every temporary file not yet committed."""
        for temp, _ in self._pending:
            _remove(temp)
        self._pending = []
        self._remove_boxes()

    def _remove_boxes(self) -> None:
        for box in self._boxes:
            _remove(box)
        self._boxes = []

    # -- as a context manager --------------------------------------------------------------------------------

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _CATCH:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        self._caught = self._caught or signum
        if not self._hold:
            raise _Signalled(signum)

    def __exit__(self, kind, exc, tb):
        final = next((f for _, f in self._pending), None)
        self._hold = True
        try:
            self.discard()
        finally:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous = {}
            self._hold = False
        if self._caught is not None:
            signal.raise_signal(self._caught)  # the default action, now that nothing is left behind
        if isinstance(exc, OSError) and not isinstance(exc, (OutputExistsError, OutputError)):
            mapped = output_error(exc, final or _final_of(exc) or "the output")
            if mapped is not None:
                raise mapped from exc
        return False


def _final_of(exc: OSError):
    name = exc.filename if isinstance(exc.filename, str) else None
    if name is None:
        return None
    m = re.match(r"^(?P<folder>.*/)?\.(?P<base>.*)\.wp-[0-9a-f]{6}-\d+-[0-9a-f]{8}\.partial$", name)
    return (m["folder"] or "") + m["base"] if m else name


def _place_new(temp: str, final: str) -> None:
    """Rename ``temp`` to ``final`` only if ``final`` does not exist (not even as a dangling symlink)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise OutputExistsError(f"{final} appeared while this output was being written (another run?); it was "
                                "kept and nothing was written. Pass overwrite=True to replace "
                                "it, or choose another name") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(final):  # no hard links here: check, then rename, as close together as possible
            raise OutputExistsError(f"{final} appeared while this output was being written; it was kept and "
                                    "nothing was written") from None
        os.rename(temp, final)
        return
    os.remove(temp)


def _place_folder(temp: str, final: str, overwrite: bool) -> None:
    """Rename the folder ``temp`` to ``final``; an existing ``final`` is moved aside first, and removed once the
    new folder is in place (only with ``overwrite``)."""
    if not os.path.lexists(final):
        os.rename(temp, final)
        return
    if not overwrite:
        raise OutputExistsError(f"{final} appeared while this output was being written (another run?); it was "
                                "kept and nothing was written. Pass overwrite=True to replace it, or choose "
                                "another name")
    aside = partial_name(final)
    os.rename(final, aside)
    try:
        os.rename(temp, final)
    except BaseException:
        os.rename(aside, final)
        raise
    _remove(aside)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except OSError:
        pass  # gone already; or not removable, which the error that brought us here explains
