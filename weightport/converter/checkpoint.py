"""Checkpoint: an ordered, lazy name -> numpy mapping over a file, and TensorSource, what writers consume.

A checkpoint knows every tensor's shape and dtype as soon as it is opened
(from a header or an index) and reads a tensor's bytes only when asked, so
inspecting or converting a model never holds more than one tensor at a time.

Format and layout are kept apart: ``format`` names the container, ``layout``
the framework convention the tensors follow, taken from the file's metadata
when weightport wrote it and otherwise guessed from the names (or None).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import FormatError, UsageError
from .detect import detect_layout  # noqa: F401 - also imported from here

LAYOUT_KEY = "weightport_layout"
# model.to_json() of the Keras model a Keras-layout file was written from, so a refusal that needs that model can
# print the line that rebuilds it (keras.models.model_from_json)
MODEL_KEY = "weightport_keras_model"


class TensorSource:
    """One tensor whose shape and dtype are known up front and whose bytes load on demand."""

    __slots__ = ("name", "shape", "dtype", "_loader", "_blocks", "file_range", "origin", "_check", "_fill")

    def __init__(self, name: str, shape, dtype, loader, blocks=None, file_range=None, origin=(), check=None,
                 fill=None):
        self.name = str(name)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self._loader = loader
        self._blocks = blocks
        # (path, offset, nbytes) where the tensor's exact little-endian bytes lie in a file, if they do:
        # a writer may then copy them file to file in the kernel, never through Python
        self.file_range = file_range
        # the files this tensor is read from, so a writer can refuse to replace its own input
        self.origin = tuple(dict.fromkeys(tuple(origin) + ((file_range[0],) if file_range else ())))
        self._check = check  # run once when the stored bytes are copied as they are (a NaN/Inf scan)
        # fill(sink): the tensor's bytes handed out in parts, sink.put(byte offset, C-contiguous array), from
        # worker threads and in any order, each filled in memory sink.slot(nbytes) lends: a writer writes each
        # part where it belongs while the workers go on
        self._fill = fill

    @classmethod
    def of(cls, name: str, value) -> "TensorSource":
        """A source for an array already in memory (numpy, torch, jax, Keras variable)."""
        from .arrays import to_numpy

        array = np.asarray(to_numpy(value))
        return cls(name, array.shape, array.dtype, lambda: array)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def load(self) -> np.ndarray:
        return self._loader()

    def check_stored(self) -> None:
        """Run the source's check of the bytes a writer copies as they are (a NaN/Inf scan), once. A writer runs
        it once the copy is queued, so both go on at once; a failure still comes before the output is in place."""
        check, self._check = self._check, None
        if check is not None:
            check()

    @property
    def streamed(self) -> bool:
        """Whether the tensor comes as a stream of row blocks (a streamed transpose), not as one stored array."""
        return self._blocks is not None

    @property
    def fillable(self) -> bool:
        """Whether the tensor can be written in parts by ``fill``, straight from the threads that compute them."""
        return self._fill is not None

    def fill(self, sink) -> None:
        """Call ``sink.put(byte offset, C-contiguous array)`` for parts covering the tensor's bytes exactly once,
        from any thread, in any order, each filled in memory from ``sink.slot(nbytes)`` where it can be (only for a
        ``fillable`` source)."""
        self._fill(sink)

    def guard(self, context) -> None:
        """Run every later read of this tensor, whole, block by block or in parts, inside ``context()`` (a context
        manager)."""
        load, blocks, fill = self._loader, self._blocks, self._fill

        def guarded_load():
            with context():
                return load()

        def guarded_blocks():
            with context():
                it = iter(blocks())
            while True:
                with context():
                    try:
                        block = next(it)
                    except StopIteration:
                        return
                yield block

        def guarded_fill(sink):
            with context():
                fill(sink)

        self._loader = guarded_load
        if blocks is not None:
            self._blocks = guarded_blocks
        if fill is not None:
            self._fill = guarded_fill

    def blocks(self):
        """The tensor as consecutive blocks of rows (axis 0), so a writer never needs all of it at once.

        One block (the whole tensor) unless the source was made with a
        ``blocks`` generator, as a streamed transpose is.
        """
        return self._blocks() if self._blocks is not None else iter((self.load(),))

    def __repr__(self) -> str:
        return f"TensorSource({self.name!r}, {self.shape}, {self.dtype})"


def as_sources(sources) -> list:
    """TensorSources from a Checkpoint, a name -> array mapping, (name, array) pairs or TensorSources."""
    if isinstance(sources, Checkpoint):
        return list(sources.sources())
    if isinstance(sources, Mapping):
        sources = sources.items()
    out = []
    for item in sources:
        if isinstance(item, TensorSource):
            out.append(item)
        elif isinstance(item, tuple) and len(item) == 2:
            name, value = item
            if isinstance(value, TensorSource):
                out.append(TensorSource(name, value.shape, value.dtype, value.load, origin=value.origin))
            else:
                out.append(TensorSource.of(name, value))
        else:
            raise UsageError(f"cannot write {type(item).__name__} {item!r}: give TensorSources, "
                             "(name, array) pairs or a name -> array mapping")
    seen = set()
    for s in out:
        if s.name in seen:
            raise UsageError(f"tensor name {s.name!r} appears twice; every tensor needs its own name")
        seen.add(s.name)
    return out


class Checkpoint(Mapping):
    """Tensors of one file (or sharded set), by name, in stored order; read lazily.

    ``checkpoint[name]`` reads that tensor now (a read-only array or memmap);
    ``shape``/``dtype``/``nbytes`` never read tensor bytes. ``layers`` maps a
    layer's group path to what the file says about it (class name, config),
    where the file says anything (``.keras`` archives, legacy Keras ``.h5``).
    """

    def __init__(self, path, format: str, sources, *, metadata=None, layout=None, layers=None, closer=None):
        self.path = None if path is None else str(path)
        self.format = format
        self._sources = {s.name: s for s in sources}
        if self.path is not None:
            for s in self._sources.values():
                if self.path not in s.origin:
                    s.origin = (self.path,) + s.origin
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.layout = layout or self.metadata.get(LAYOUT_KEY) or detect_layout(self._sources)
        self.layers = dict(layers or {})
        self._closer = closer

    def __getitem__(self, name) -> np.ndarray:
        source = self._sources[name]
        try:
            return source.load()
        except FormatError:
            raise
        except (OSError, ValueError) as exc:
            raise FormatError(f"{self.path}: could not read tensor {name!r} {source.shape} {source.dtype}: "
                              f"{exc}; the file may have changed or be damaged since it was opened") from exc

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, name) -> bool:
        return name in self._sources

    def shape(self, name) -> tuple:
        return self._sources[name].shape

    def dtype(self, name) -> np.dtype:
        return self._sources[name].dtype

    def source(self, name) -> TensorSource:
        return self._sources[name]

    def sources(self):
        """TensorSources in stored order (what ``write_checkpoint`` consumes)."""
        return iter(self._sources.values())

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._sources.values())

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(s.shape) for s in self._sources.values())

    def close(self) -> None:
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<Checkpoint {self.path!r} format={self.format} layout={self.layout} "
                f"tensors={len(self)} bytes={self.nbytes}>")
