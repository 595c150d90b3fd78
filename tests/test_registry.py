"""The rule registry: built-ins found by scanning the package, names unique, entry-point plugins loaded."""
import pkgutil
import sys
from pathlib import Path

import pytest

import weightport as wp
import weightport.mappings
from weightport.mappings import rule as rule_module
from weightport.mappings.rule import Registry, Rule, registry

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

AT_COLLECTION = list(registry)  # before any test registers a rule of its own


def test_every_module_of_the_package_is_scanned_and_imported():
    files = sorted(p.stem for p in Path(weightport.mappings.__file__).parent.glob("*.py") if p.stem != "__init__")
    assert rule_module.builtin_modules() == files
    list(registry)
    assert all(f"weightport.mappings.{name}" in sys.modules for name in files)
    assert {type(r).__module__ for r in AT_COLLECTION} <= {
        f"weightport.mappings.{name}" for name in files}
    assert "BUILTIN_MODULES" not in vars(rule_module)


def _rule(name, base=Rule):
    return type("Rule_" + name.replace("-", "_"), (base,), {"name": name, "canonical": lambda self, hp: ["w"]})


def test_a_second_rule_of_a_name_is_refused_naming_both():
    fresh = Registry()
    fresh._loaded = True  # no built-ins: only what this test adds
    first, second = _rule("dup-test"), _rule("dup-test")
    second.__qualname__ = "Elsewhere"
    fresh.add(first())
    with pytest.raises(wp.UsageError, match=r"'dup-test'.*Rule_dup_test.*Elsewhere.*unique"):
        fresh.add(second())
    assert type(fresh.get("dup-test")) is first  # the first one stays


def test_a_built_in_name_cannot_be_taken_over():
    with pytest.raises(wp.UsageError, match=r"'dense'.*weightport\.mappings\.dense\.DenseRule"):
        registry.add(_rule("dense")())
    assert type(registry.get("dense")).__module__ == "weightport.mappings.dense"


def test_the_same_class_again_is_no_duplicate():
    fresh = Registry()
    fresh._loaded = True
    cls = _rule("again-test")
    fresh.add(cls())
    fresh.add(cls())  # an entry point naming a rule its module already registered
    assert [r.name for r in fresh] == ["again-test"]


def test_entry_point_plugins_are_loaded(monkeypatch):
    plugin = _rule("plugin-test")

    class EntryPoint:
        def load(self):
            return plugin

    import weightport.plugins

    monkeypatch.setattr(weightport.plugins, "entry_points",
                        lambda group: [EntryPoint()] if group == "weightport.rules" else [])
    fresh = Registry()
    assert type(fresh.get("plugin-test")) is plugin


def test_entry_points_are_parsed_only_where_a_package_names_the_group(tmp_path, monkeypatch):
    """An installed package's entry_points.txt that names the group is found (as importlib gives it); where
    none names it, importlib's full parse of every package's entry points is skipped."""
    import importlib.metadata

    from weightport.plugins import entry_points

    info = tmp_path / "wp_plugin_probe-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wp-plugin-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[weightport.probe-test]\nprobe = json:dumps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = entry_points("weightport.probe-test")
    assert [(ep.name, ep.value) for ep in found] == [("probe", "json:dumps")]
    import json

    assert found[0].load() is json.dumps
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: pytest.fail("parsed every package"))
    assert entry_points("weightport.nobody-names-this") == []


def test_entry_points_in_a_zip_or_an_egg_on_the_path_are_found(tmp_path, monkeypatch):
    """The quick scan lists metadata folders itself: an entry it cannot list (a zip archive) sends the lookup
    to importlib, and an unpacked .egg's EGG-INFO is read; a one-file .egg-info has no entry points."""
    import zipfile

    from weightport.plugins import entry_points

    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("wp_zip_probe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: wp-zip-probe\nVersion: 0.1\n")
        z.writestr("wp_zip_probe-0.1.dist-info/entry_points.txt", "[weightport.zip-test]\nzipped = json:loads\n")
    egg = tmp_path / "wp_egg_probe-0.1.egg" / "EGG-INFO"
    egg.mkdir(parents=True)
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: wp-egg-probe\nVersion: 0.1\n")
    (egg / "entry_points.txt").write_text("[weightport.egg-test]\negged = json:dumps\n")
    (tmp_path / "one_file-0.1.egg-info").write_text("Metadata-Version: 1.1\nName: one-file\nVersion: 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(egg.parent))
    monkeypatch.syspath_prepend(str(archive))
    assert [(ep.name, ep.value) for ep in entry_points("weightport.zip-test")] == [("zipped", "json:loads")]
    assert [(ep.name, ep.value) for ep in entry_points("weightport.egg-test")] == [("egged", "json:dumps")]
    assert entry_points("weightport.nobody-names-this") == []


def test_non_rule_modules_register_nothing():
    names = {info.name for info in pkgutil.iter_modules(weightport.mappings.__path__)}
    assert {"rule", "transforms", "samples", "introspect"} <= names
    assert not {type(r).__module__.rsplit(".", 1)[-1] for r in AT_COLLECTION} & {"rule", "transforms", "samples",
                                                                           "introspect"}
