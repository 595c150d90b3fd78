"""`weightport inspect`: what is in a checkpoint, from its header alone, without importing a framework."""
import json
import os
import struct
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest

from weightport.cli import main
from weightport.converter.checkpoint import TensorSource
from weightport.converter.formats import write_checkpoint

TENSORS = {
    "encoder.proj.weight": np.ones((7, 5), np.float32),
    "encoder.proj.bias": np.ones(5, ml_dtypes.bfloat16),
    "head.ids": np.arange(3, dtype=np.int64),
}


def run_cli(*args):
    """(exit code, stdout, stderr) of the real command in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-m", "weightport", *map(str, args)], capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.keras_free
def test_table_lists_every_tensor_and_the_totals(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    write_checkpoint(path, TENSORS, metadata={"weightport_layout": "torch"})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for name, shape, dtype in [("encoder.proj.weight", "(7, 5)", "float32"), ("encoder.proj.bias", "(5,)", "bfloat16"),
                               ("head.ids", "(3,)", "int64")]:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert shape in line and dtype in line
    assert f"3 tensors, 43 parameters, {7 * 5 * 4 + 5 * 2 + 3 * 8} B\n" in out  # under 1 KB: no "(174 bytes)" echo
    assert "format: safetensors" in out and "layout: torch" in out


@pytest.mark.parametrize("filename", ["model.safetensors", "model.npz", "model.weights.h5", "model.pt"])
@pytest.mark.keras_free
def test_json_output_matches_the_file(tmp_path, filename):
    path = tmp_path / filename
    write_checkpoint(path, TENSORS)
    code, out, err = run_cli("inspect", path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [t["name"] for t in report["tensors"]] == list(TENSORS)
    for t in report["tensors"]:
        want = TENSORS[t["name"]]
        assert tuple(t["shape"]) == want.shape and t["dtype"] == want.dtype.name and t["nbytes"] == want.nbytes
    assert report["totals"] == {"tensors": 3, "parameters": 43, "bytes": sum(a.nbytes for a in TENSORS.values())}
    assert report["layout"] == "torch"  # from the names: nothing in these files records it


@pytest.mark.parametrize("filename", ["model.safetensors", "model.npz", "model.weights.h5", "model.keras"])
def test_no_framework_is_imported_for_non_torch_files(tmp_path, filename):
    path = tmp_path / filename
    if filename.endswith(".keras"):
        import keras

        model = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5)])
        model.save(str(path))
    else:
        write_checkpoint(path, TENSORS)
    code = ("import sys; from weightport.cli import main; rc = main(['inspect', sys.argv[1]]); "
            "bad = [m for m in ('torch', 'keras', 'jax', 'flax', 'tensorflow') if m in sys.modules]; "
            "print('IMPORTED', bad); sys.exit(rc or (3 if bad else 0))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "IMPORTED []" in out.stdout


@pytest.mark.keras_free
def test_two_gigabyte_file_is_inspected_from_its_header(tmp_path, monkeypatch, capsys):
    """A sparse 2 GB safetensors file: inspect reads the header only, fast."""
    header, offset = {}, 0
    for i in range(200):
        n = 10_000_000 if i % 2 == 0 else 4096
        header[f"model.layers.{i}.weight"] = {"dtype": "BF16", "shape": [n // 64, 64],
                                              "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: no disk used
    assert os.path.getsize(path) > 2 * 10**9

    def no_reads(self):
        raise AssertionError(f"inspect read the bytes of {self.name}")

    monkeypatch.setattr(TensorSource, "load", no_reads)
    main(["inspect", str(path)])  # warm the imports (ml_dtypes) so the timing below is the work itself
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["inspect", str(path), "--json"]) == 0
    elapsed = time.perf_counter() - start
    report = json.loads(capsys.readouterr().out)
    assert report["totals"] == {"tensors": 200, "parameters": offset // 2, "bytes": offset}
    assert elapsed < 0.3, f"inspect took {elapsed:.3f} s"


@pytest.mark.keras_free
def test_pt_inspect_refuses_unsafe_pickle_unless_trusted(tmp_path):
    import fractions

    import torch

    torch.save({"fc.weight": torch.ones(5, 7), "meta": fractions.Fraction(1, 3)}, tmp_path / "odd.pt")
    code, out, err = run_cli("inspect", tmp_path / "odd.pt")
    assert code == 2 and "odd.pt" in err and "--trust-pickle" in err
    code, out, err = run_cli("inspect", tmp_path / "odd.pt", "--trust-pickle")
    assert code == 0 and "fc.weight" in out and "format: torch" in out


@pytest.mark.keras_free
def test_unreadable_input_exits_2(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00")
    code, out, err = run_cli("inspect", tmp_path / "junk.safetensors")
    assert code == 2 and "junk.safetensors" in err and "Traceback" not in err
    code, out, err = run_cli("inspect", tmp_path / "absent.pt")
    assert code == 2 and "no such file" in err
