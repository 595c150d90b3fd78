"""Every registered rule, in every layout it links, round-trips canonical -> layout -> canonical bit for bit.

numpy only: no framework is imported here (``test_round_trips_need_no_framework`` runs the same checks in a
fresh interpreter and looks). The rules are enumerated from the registry when this module is collected, before
any test registers a rule of its own, so a new built-in or plugin rule is tested the moment it exists; it must
offer ``examples(layout, rng)``, else its case fails naming it.
"""
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from weightport.mappings.rule import Rule, registry
from weightport.mappings.transforms import IDENTITY

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

RULES = [rule.name for rule in registry]
# layouts a rule recognises only to refuse them (it has no links there)
REFUSED = {("batch_normalization", "equinox")}


def linked_layouts(rule) -> list:
    return [layout for layout in rule.layouts() if layout == "keras" or getattr(rule, f"links_{layout}", None)
            or type(rule).links is not Rule.links]


def same(a, b) -> bool:
    bits = lambda x: np.ascontiguousarray(x).reshape(-1).view(np.uint8)  # noqa: E731
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bits(a), bits(b))


def check_round_trip(rule, layout, hp, canonical) -> None:
    where = f"{rule.name} in {layout} with {hp}"
    assert len(canonical) == len(rule.canonical(hp)), f"{where}: examples() gave weights for other slots"
    native = rule.from_canonical(layout, hp, canonical)
    assert rule.native_shapes(layout, hp, [a.shape for a in canonical]) == {k: v.shape for k, v in native.items()}, \
        f"{where}: predicted layout shapes differ from the arrays"
    real = {k: v.shape for k, v in native.items() if k in rule.native_slots(layout, hp)}
    assert rule.canonical_shapes(layout, hp, real) == [a.shape for a in canonical], where
    back = rule.to_canonical(layout, hp, native)
    lossy = {s for lk in rule.links(layout, hp) if not lk.transform.keeps_canonical for s in lk.canonical}
    for name, a, b in zip(rule.canonical(hp), canonical, back):
        if name not in lossy:
            assert same(a, b), f"{where}: {name} changed on the way canonical -> {layout} -> canonical"
    again = rule.from_canonical(layout, hp, back)  # what a lossy link gives back, the layout holds exactly
    for slot, a in native.items():
        assert same(a, again[slot]), f"{where}: {slot} differs after a second trip"


def moved_links(rule, layout, hp, canonical) -> dict:
    """{link's canonical slots: whether its transform changed its arrays} for links with a transform (not a plain
    copy) that keeps the number of arrays: skipping such a transform is what a converter that forgets it does."""
    by_name = dict(zip(rule.canonical(hp), canonical))
    moved = {}
    for lk in rule.links(layout, hp):
        if lk.transform is IDENTITY or not lk.canonical or len(lk.canonical) != len(lk.native):
            continue
        before = tuple(by_name[s] for s in lk.canonical)
        moved[lk.canonical] = not all(same(a, b) for a, b in zip(before, lk.transform.forward(before)))
    return moved


def examples(rule, layout):
    rng = np.random.default_rng(zlib.crc32(f"{rule.name}/{layout}".encode()))
    found = rule.examples(layout, rng)
    assert found, (f"rule {rule.name!r} ({type(rule).__module__}) offers no examples for layout {layout!r}: "
                   "define examples(layout, rng) returning [(hp, canonical weights)] (see weightport.mappings.samples)")
    return found


def check_all(names=None) -> int:
    """Every check above, for every rule named (all registered ones by default); the number of links checked."""
    checked = 0
    for name in names or [rule.name for rule in registry]:
        rule = registry.get(name)
        for layout in linked_layouts(rule):
            moved: dict = {}
            for hp, canonical in examples(rule, layout):
                check_round_trip(rule, layout, hp, canonical)
                for slots, did in moved_links(rule, layout, hp, canonical).items():
                    moved[slots] = moved.get(slots, False) or did
            # negative control: each transform changes its arrays in some example, so skipping it changes the result
            idle = [slots for slots, did in moved.items() if not did]
            assert not idle, f"{name} in {layout}: the transforms of {idle} left every example's arrays as they were"
            checked += len(moved)
    return checked


@pytest.mark.parametrize("name", RULES)
def test_rule_round_trips_in_every_layout(name):
    rule = registry.get(name)
    if not [lay for lay in linked_layouts(rule) if lay != "keras"]:
        # a Keras layer whose weights other frameworks keep as layers of their own (an untied
        # ReversibleEmbedding's table and output projection): its parts must hold every weight, once
        hp, canonical = examples(rule, "keras")[0]
        parts = rule.parts("keras", hp)
        assert parts, f"{name} links no layout but Keras and declares no parts"
        held = [slot for _, part, part_hp in parts
                for slot in registry.get(part).native_slots("keras", part_hp)]
        assert sorted(held) == sorted(rule.canonical(hp)), f"{name}: its parts hold {held}"
    check_all([name])


def test_layouts_recognised_without_links_are_only_the_known_refusals():
    gaps = {(rule.name, layout) for rule in map(registry.get, RULES) for layout in rule.layouts()
            if layout not in linked_layouts(rule)}
    assert gaps == REFUSED


def test_a_rule_without_examples_fails_naming_it():
    class Bare(Rule):
        name = "bare-test-rule"
        classes = {"keras": ("NoSuchLayer",)}

        def canonical(self, hp):
            return ["w"]

    with pytest.raises(AssertionError, match="'bare-test-rule'.*no examples"):
        examples(Bare(), "keras")


def test_negative_control_a_skipped_transform_is_seen():
    """With one transform of the dense rule skipped (torch kernel left (in, out)), the layout tensors differ."""
    rule = registry.get("dense")
    hp, canonical = examples(rule, "torch")[0]
    native = rule.from_canonical("torch", hp, canonical)
    assert not same(native["weight"], canonical[0])  # the transform moved it ...
    assert moved_links(rule, "torch", hp, canonical) == {("kernel",): True}  # ... and the control saw that link
    assert moved_links(rule, "flax", hp, canonical) == {}  # a plain copy is no transform to skip


def test_round_trips_need_no_framework():
    code = ("import sys; sys.path.insert(0, 'tests'); import test_rule_roundtrip as t; moved = t.check_all(); "
            "bad = [m for m in ('torch', 'keras', 'jax', 'flax', 'tensorflow', 'equinox') if m in sys.modules]; "
            "print(moved, bad); sys.exit(1 if bad or moved < 20 else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stdout + out.stderr
