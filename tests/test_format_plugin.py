"""A new format is one file: a module declaring the table's fields, found by entry point or ``register``."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import weightport as wp
from weightport.cli import build_parser
from weightport.converter import formats
from weightport.errors import UsageError

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

TOY = '''
"""Toy format for the tests: a magic line, then JSON of name -> [shape, dtype, values]."""
import json

import numpy as np

from weightport.converter.checkpoint import Checkpoint, TensorSource
from weightport.converter.formats.fileio import load_checked

NAME = "toy"
SUFFIXES = (".toyw",)
SNIFF_ORDER = 50
WRITABLE = True
MAGIC = b"TOYW\\n"


def sniff(path, head):
    return head.startswith(MAGIC)


def read(path, **opts):
    with open(path, "rb") as f:
        body = json.loads(f.read()[len(MAGIC):])
    sources = [TensorSource(name, shape, dtype, lambda v=values, d=dtype, s=shape: np.array(v, d).reshape(s))
               for name, (shape, dtype, values) in body["tensors"].items()]
    return Checkpoint(path, NAME, sources, metadata=body["metadata"])


def write(path, sources, metadata, *, staging, progress=None, **opts):
    tensors = {}
    for s in sources:
        array = load_checked(s, path)
        tensors[s.name] = [list(array.shape), array.dtype.name, array.reshape(-1).tolist()]
    with open(staging.file(path), "wb") as f:
        f.write(MAGIC + json.dumps({"tensors": tensors, "metadata": metadata}).encode())
'''

TENSORS = {"fc.weight": np.arange(35, dtype=np.float32).reshape(5, 7), "fc.bias": np.ones(5, np.float32)}


@pytest.fixture
def plugin_dir(tmp_path):
    """``toyfmt.py`` and the installed-package metadata that names it in the ``weightport.formats`` group."""
    (tmp_path / "toyfmt.py").write_text(TOY)
    info = tmp_path / "toyfmt-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfmt\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[weightport.formats]\ntoy = toyfmt\n")
    return tmp_path


def run(code, plugin_dir, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                         text=True, env=env, cwd=plugin_dir)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_installed_format_plugin_reads_writes_and_shows_in_the_cli(plugin_dir):
    wp.converter.formats.write_checkpoint(plugin_dir / "in.safetensors", TENSORS)
    out = run("""
        import sys
        import numpy as np
        import weightport as wp
        from weightport.cli import main

        wp.convert("in.safetensors", "out.toyw")          # the writer, picked by suffix
        ckpt = wp.load("out.toyw")                        # the reader, picked by magic bytes
        print(ckpt.format, ckpt.layout, sorted(ckpt))
        wp.convert("out.toyw", "back.npz")
        assert np.array_equal(wp.load("back.npz")["fc.weight"], np.arange(35, dtype=np.float32).reshape(5, 7))
        sys.exit(main(["inspect", "out.toyw", "--format", "toy"]))
    """, plugin_dir)
    assert out.splitlines()[0] == "toy torch ['fc.bias', 'fc.weight']"
    assert "format: toy" in out
    helped = run("from weightport.cli import main; main(['inspect', '--help'])", plugin_dir)
    choices = helped.replace("\n", "").replace(" ", "").split("--format{", 1)[1].split("}", 1)[0].split(",")
    assert "toy" in choices and {"safetensors", "keras", "npz", "torch", "onnx", "msgpack"} <= set(choices)
    assert ".toyw" in helped


@pytest.fixture
def toy():
    spec = importlib.util.spec_from_loader("toyfmt_registered", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(TOY, module.__dict__)
    formats.register(module)
    yield module
    formats.unregister("toy")


def test_a_registered_format_is_read_written_and_offered(toy, tmp_path):
    formats.write_checkpoint(tmp_path / "m.toyw", TENSORS)
    ckpt = wp.load(tmp_path / "m.toyw")
    assert ckpt.format == "toy" and np.array_equal(ckpt["fc.weight"], TENSORS["fc.weight"])
    wp.convert(tmp_path / "m.toyw", tmp_path / "m.safetensors")
    assert np.array_equal(wp.load(tmp_path / "m.safetensors")["fc.bias"], TENSORS["fc.bias"])
    assert "toy" in formats.names() and "toy" in formats.MODULES
    assert build_parser().parse_args(["inspect", "m.toyw", "--format", "toy"]).format == "toy"


def test_the_sniff_order_is_kept_and_a_format_needs_its_fields():
    built_in = ("safetensors", "keras", "npz", "torch", "onnx", "msgpack")
    assert tuple(n for n in formats.names() if n in built_in) == built_in
    assert formats.names()[-1] == "msgpack"  # msgpack's weak magic last
    with pytest.raises(UsageError, match="not a format module"):
        formats.register(json)
    with pytest.raises(UsageError, match="exists already"):
        formats.register(type("Fake", (), {"NAME": "npz", "SUFFIXES": (), "SNIFF_ORDER": 1, "WRITABLE": False,
                                           "sniff": None, "read": None}))
