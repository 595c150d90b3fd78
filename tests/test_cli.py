"""The weightport command: convert and verify, with their exit codes."""
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
'''


def run(*args, cwd):
    cli = os.path.join(os.path.dirname(sys.executable), "weightport")
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")})


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 7)).astype("float32"))
    return tmp_path


def test_convert_to_keras_h5_then_verify(workdir):
    out = run("convert", "net.pt", "net.weights.h5", "--model", "models.py:keras_net", "--json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["files"][0].endswith("net.weights.h5")
    out = run("verify", "models.py:torch_net", "models.py:keras_net", "--inputs", "x.npy",
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
