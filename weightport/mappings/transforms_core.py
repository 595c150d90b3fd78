"""The algebra of transforms: the base class, one-array transforms, the identity, per-array and chained application.

A transform maps a tuple of arrays in the canonical (Keras) form to a tuple of
arrays in some framework's layout (``forward``), and back (``inverse``). Each
knows its inverse and how it changes shapes, so a rule declares one direction
and gets the other for free, and shapes can be checked before any byte is read.
"""
from __future__ import annotations


class Transform:
    """Base class: ``n_in`` canonical arrays <-> ``n_out`` layout arrays."""

    n_in = 1
    n_out = 1
    # which round trips give back every bit: canonical -> layout -> canonical, and layout -> canonical -> layout.
    # A transform that drops information clears the one it breaks (a bias sum loses the layout's split).
    keeps_canonical = True
    keeps_layout = True

    @property
    def exact(self) -> bool:
        """Bitwise both ways round; a port through a transform that is not is reported function-preserving."""
        return self.keeps_canonical and self.keeps_layout

    def forward(self, arrays: tuple) -> tuple:
        raise NotImplementedError

    def inverse(self, arrays: tuple) -> tuple:
        raise NotImplementedError

    def forward_shapes(self, shapes: tuple) -> tuple:
        raise NotImplementedError

    def inverse_shapes(self, shapes: tuple) -> tuple:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__.lower()

    def describe_inverse(self) -> str:
        """How ``inverse`` moves the arrays, for reports of ports into the canonical side."""
        return f"undo {self.describe()}"

    def __rshift__(self, other: "Transform") -> "Chain":
        return Chain(self, other)

    def __repr__(self) -> str:
        return self.describe()


class Unary(Transform):
    """A one-array transform: subclasses define the four single-array methods."""

    def forward(self, arrays):
        return (self.fwd(arrays[0]),)

    def inverse(self, arrays):
        return (self.inv(arrays[0]),)

    def forward_shapes(self, shapes):
        return (self.fwd_shape(tuple(shapes[0])),)

    def inverse_shapes(self, shapes):
        return (self.inv_shape(tuple(shapes[0])),)


class Identity(Unary):
    def fwd(self, a):
        return a

    inv = fwd

    def fwd_shape(self, s):
        return s

    inv_shape = fwd_shape

    def describe(self):
        return "copy"

    describe_inverse = describe


class Each(Transform):
    """Apply one unary transform to each of ``n`` arrays (``only``: to those at these positions; the rest pass)."""

    def __init__(self, n: int, t: Unary, only=None):
        self.n_in = self.n_out = n
        self.t = t
        self.only = None if only is None else frozenset(only)
        self.keeps_canonical, self.keeps_layout = t.keeps_canonical, t.keeps_layout

    def _each(self, items, fn):
        return tuple(fn(x) if self.only is None or i in self.only else x for i, x in enumerate(items))

    def forward(self, arrays):
        return self._each(arrays, lambda a: self.t.forward((a,))[0])

    def inverse(self, arrays):
        return self._each(arrays, lambda a: self.t.inverse((a,))[0])

    def forward_shapes(self, shapes):
        return self._each(shapes, lambda s: self.t.forward_shapes((s,))[0])

    def inverse_shapes(self, shapes):
        return self._each(shapes, lambda s: self.t.inverse_shapes((s,))[0])

    def _which(self, text):
        if self.only is None:
            return f"each({text})"
        return text if self.n_in == 1 else f"arrays {sorted(self.only)}({text})"

    def describe(self):
        return self._which(self.t.describe())

    def describe_inverse(self):
        return self._which(self.t.describe_inverse())


class Chain(Transform):
    """Transforms applied in order (forward); inverted in reverse order."""

    def __init__(self, *parts: Transform):
        flat = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, Chain) else [p])
        for a, b in zip(flat, flat[1:]):
            if a.n_out != b.n_in:
                raise ValueError(f"cannot chain {a.describe()} ({a.n_out} out) into {b.describe()} ({b.n_in} in)")
        self.parts = tuple(flat)
        self.n_in, self.n_out = flat[0].n_in, flat[-1].n_out
        self.keeps_canonical = all(p.keeps_canonical for p in flat)
        self.keeps_layout = all(p.keeps_layout for p in flat)

    def forward(self, arrays):
        for p in self.parts:
            arrays = p.forward(arrays)
        return arrays

    def inverse(self, arrays):
        for p in reversed(self.parts):
            arrays = p.inverse(arrays)
        return arrays

    def forward_shapes(self, shapes):
        for p in self.parts:
            shapes = p.forward_shapes(shapes)
        return shapes

    def inverse_shapes(self, shapes):
        for p in reversed(self.parts):
            shapes = p.inverse_shapes(shapes)
        return shapes

    def fwd_shape(self, s):
        return self.forward_shapes((s,))[0]

    def inv_shape(self, s):
        return self.inverse_shapes((s,))[0]

    def describe(self):
        return " > ".join(p.describe() for p in self.parts)

    def describe_inverse(self):
        return " > ".join(p.describe_inverse() for p in reversed(self.parts))


IDENTITY = Identity()
