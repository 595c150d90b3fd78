"""The layouts, in one table that rules, checkpoint naming, file metadata and the CLI all read.

A layout is a framework's conventions for tensors (names and axis orders),
never a container: see DESIGN.md. Adding a layout is adding a row here (or
``register``-ing one from a plugin) and ``links_<layout>`` methods to the
rules that support it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    name: str
    separator: str  # joins a layer's path and a slot into a tensor name
    safetensors_tag: str | None  # the ``format`` value written into safetensors metadata, as HF tools do
    writable: bool = True  # offered as ``--to`` / ``to=`` for bare file conversions


LAYOUTS = {lay.name: lay for lay in (
    Layout("keras", "/", "keras"),
    Layout("torch", ".", "pt"),
    Layout("flax", "/", "flax"),
    Layout("equinox", ".", None),
    Layout("onnx", ".", "onnx", writable=False),
)}



def names() -> tuple:
    return tuple(LAYOUTS)


def writable() -> tuple:
    """The layouts a bare file can be converted to (``to=``, ``--to``)."""
    return tuple(name for name, lay in LAYOUTS.items() if lay.writable)


def register(layout: Layout) -> Layout:
    """Add a layout (a plugin's framework); a name already taken is refused."""
    from .errors import UsageError

    if layout.name in LAYOUTS:
        raise UsageError(f"layout {layout.name!r} is already registered: {LAYOUTS[layout.name]}")
    LAYOUTS[layout.name] = layout
    return layout


def separator(layout) -> str:
    """The separator of ``layout``'s tensor names; ``.`` for an unknown layout, as torch writes."""
    lay = LAYOUTS.get(layout)
    return lay.separator if lay else "."
