"""The weightport command: convert and verify, with their exit codes."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("keras")

MODELS = '''
import os
os.environ.setdefault("KERAS_BACKEND", "torch")
import keras, torch


def torch_net():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def keras_net():
    return keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)])


def keras_wrong():
    return keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), keras.layers.Dense(4)])


def keras_named():
    return keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="tanh", name="hid"),
                             keras.layers.Dense(3, name="out")])


def broken():
    raise RuntimeError("boom from the model builder")
'''


def run_process(*args, cwd):
    """The installed ``weightport`` script in a fresh interpreter (the backend the suite runs under)."""
    cli = os.path.join(os.path.dirname(sys.executable), "weightport")
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")})


def run(*args, cwd):
    """``weightport.cli.main`` in this process, from ``cwd``, with its streams captured: the same parser, commands
    and exit codes as the script (``run_process`` checks the script itself), without paying for a fresh
    interpreter that imports torch and Keras again on every call (most of this module's time before)."""
    from weightport.cli import main

    out, err, here, path = io.StringIO(), io.StringIO(), os.getcwd(), list(sys.path)
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(here)
        sys.path[:] = path  # --model FILE.py puts the file's folder on sys.path
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 7)).astype("float32"))
    return tmp_path


def test_convert_to_keras_h5_then_verify(workdir):
    """Through the installed script in a fresh interpreter, Keras on the suite's backend."""
    out = run_process("convert", "net.pt", "net.weights.h5", "--model", "models.py:keras_net", "--json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["files"][0].endswith("net.weights.h5")
    out = run_process("verify", "models.py:torch_net", "models.py:keras_net", "--inputs", "x.npy",
              "--weights-a", "net.pt", "--weights-b", "net.weights.h5", "--json", cwd=workdir)
    # the h5 file needs the Keras model to be read; verify ports it through model structure
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_verify_fails_with_exit_1_when_outputs_differ(workdir):
    out = run("verify", "models.py:torch_net", "models.py:keras_net", "--inputs", "x.npy", "--weights-a",
              "net.pt", cwd=workdir)  # the Keras model keeps its random initialisation
    assert out.returncode == 1 and "NOT equivalent" in out.stdout


def test_convert_exit_codes(workdir):
    refused = run("convert", "net.pt", "bad.weights.h5", "--model", "models.py:keras_wrong", cwd=workdir)
    assert refused.returncode == 1 and "5x3" in refused.stderr
    assert not (workdir / "bad.weights.h5").exists()
    (workdir / "junk.safetensors").write_bytes(b"\x05\x00")
    unreadable = run("convert", "junk.safetensors", "out.safetensors", "--to", "keras", cwd=workdir)
    assert unreadable.returncode == 2 and "junk.safetensors" in unreadable.stderr
    usage = run("convert", "net.pt", "o.safetensors", "--model", "nonsense", cwd=workdir)
    assert usage.returncode == 2


def test_convert_overwrite_and_layout(workdir):
    assert run("convert", "net.pt", "k.safetensors", "--to", "keras", "--quiet", cwd=workdir).returncode == 0
    again = run("convert", "net.pt", "k.safetensors", "--to", "keras", cwd=workdir)
    assert again.returncode != 0 and "exists" in again.stderr
    assert run("convert", "net.pt", "k.safetensors", "--to", "keras", "--overwrite", cwd=workdir).returncode == 0
    info = json.loads(run("inspect", "k.safetensors", "--json", cwd=workdir).stdout)
    assert info["layout"] == "keras"
    assert {t["name"]: t["shape"] for t in info["tensors"]}["0/kernel"] == [7, 5]


def test_convert_with_an_unreadable_plan_is_a_usage_error(workdir):
    (workdir / "broken.json").write_text('{"steps": 3}')
    for plan in ("missing.json", "broken.json"):
        out = run("convert", "net.pt", "o.safetensors", "--plan", plan, cwd=workdir)
        assert out.returncode == 2 and "cannot read the plan" in out.stderr and "Traceback" not in out.stderr


def test_hints_reach_the_matcher(workdir):
    ok = run("convert", "net.pt", "h.weights.h5", "--model", "models.py:keras_named", "--hint", "0=hid",
             "--hint", "2=out", "--quiet", cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    swapped = run("convert", "net.pt", "s.weights.h5", "--model", "models.py:keras_named", "--hint", "0=out",
                  "--hint", "2=hid", cwd=workdir)
    assert swapped.returncode == 1 and "5x3" in swapped.stderr and "Traceback" not in swapped.stderr
    bad = run("convert", "net.pt", "b.weights.h5", "--model", "models.py:keras_named", "--hint", "0", cwd=workdir)
    assert bad.returncode == 2 and "--hint takes SOURCE=TARGET" in bad.stderr


def test_convert_reads_the_source_as_the_format_given(workdir):
    out = run("convert", "net.pt", "o.safetensors", "--to", "keras", "--format", "npz", cwd=workdir)
    assert out.returncode == 2 and "net.pt" in out.stderr and "Traceback" not in out.stderr
    assert run("convert", "net.pt", "o.safetensors", "--to", "keras", "--format", "torch", "--quiet",
               cwd=workdir).returncode == 0


def test_an_unknown_output_suffix_names_the_suffixes_not_a_python_keyword(workdir):
    out = run("convert", "net.pt", "out.xyz", "--to", "keras", cwd=workdir)
    assert out.returncode == 2 and ".safetensors" in out.stderr and "format=" not in out.stderr


def test_report_counts_in_the_singular(workdir):
    torch.save(torch.nn.Linear(7, 5).state_dict(), workdir / "one.pt")
    out = run("convert", "one.pt", "one.safetensors", "--to", "keras", cwd=workdir)
    assert out.returncode == 0 and "1 layer ported" in out.stdout
    out = run("convert", "net.pt", "two.safetensors", "--to", "keras", cwd=workdir)
    assert "2 layers ported" in out.stdout


def test_progress_flag_shows_a_bar_even_on_a_pipe(workdir):
    shown = run("convert", "net.pt", "p.safetensors", "--to", "keras", "--progress", "--quiet", cwd=workdir)
    assert shown.returncode == 0 and "100%" in shown.stderr and shown.stdout == ""
    hidden = run("convert", "net.pt", "q.safetensors", "--to", "keras", "--no-progress", cwd=workdir)
    assert hidden.returncode == 0 and "100%" not in hidden.stderr and "ported" in hidden.stdout
    default = run("convert", "net.pt", "r.safetensors", "--to", "keras", cwd=workdir)  # a pipe, 200 bytes
    assert "100%" not in default.stderr


def parse_rules(text):
    """{rule: {layout: what it recognises}} from `weightport rules`."""
    rules, current = {}, None
    for line in text.splitlines():
        if not line.startswith(" "):
            current = rules.setdefault(line.strip(), {})
        else:
            layout, _, what = line.strip().partition(" ")
            current[layout] = what.strip()
    return rules


def test_rules_say_what_a_user_can_give(tmp_path):
    out = run("rules", cwd=tmp_path)
    assert out.returncode == 0
    rules = parse_rules(out.stdout)
    assert all(what for layouts in rules.values() for what in layouts.values()), rules
    assert rules["dense"] == {"keras": "Dense", "torch": "Linear", "flax": "Linear", "equinox": "Linear",
                              "onnx": "Gemm, MatMul"}
    separable = rules["separable_conv"]["torch"]
    assert "depthwise" in separable and "pointwise" in separable
    projections = rules["attention_projections"]["torch"]
    assert "four Linear" in projections and "q_proj" in projections and projections != "Module"
    columns = {line.index(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("  ")}
    assert len(columns) == 1  # one column, equinox included
    as_json = {r["rule"]: r for r in json.loads(run("rules", "--json", cwd=tmp_path).stdout)}
    assert as_json["separable_conv"]["recognises"]["torch"] == separable


KERAS_CNN = '''
import keras
m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
                      keras.layers.BatchNormalization(name="bn"), keras.layers.Flatten(), keras.layers.Dense(5, name="fc")])
m.save_weights("cnn.weights.h5")
m.save("cnn.keras")
'''


def test_inspect_names_the_layers_of_keras_files(tmp_path):
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        exec(KERAS_CNN, {})  # in this process: a fresh interpreter would import Keras again for two small files
    finally:
        os.chdir(here)
    for name, label in (("cnn.weights.h5", "{}"), ("cnn.keras", "{} ({})")):
        out = run("inspect", name, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        rows = {ln.split()[0]: ln for ln in out.stdout.splitlines() if ln.startswith("layers/")}
        for path, layer, cls in (("layers/conv2d/vars/0", "c1", "Conv2D"), ("layers/batch_normalization/vars/3",
                                 "bn", "BatchNormalization"), ("layers/dense/vars/1", "fc", "Dense")):
            assert rows[path].endswith("  " + label.format(layer, cls)), rows[path]
        tensors = json.loads(run("inspect", name, "--json", cwd=tmp_path).stdout)["tensors"]
        assert {t["name"]: t["layer"] for t in tensors}["layers/dense/vars/0"] == "fc"
        assert "3.3 KB (3,412 bytes)" in out.stdout and "8 tensors, 853 parameters" in out.stdout


def test_inspect_counts_and_sizes_read_as_english(tmp_path):
    from weightport.converter.formats import write_checkpoint

    write_checkpoint(tmp_path / "one.safetensors", {"scale": np.ones((), "float32")})
    out = run("inspect", "one.safetensors", cwd=tmp_path)
    assert "\n1 tensor, 1 parameter, 4 B\n" in out.stdout and "bytes)" not in out.stdout
    assert "layer" not in out.stdout.splitlines()[0]  # nothing in a bare file names its layers
