"""Every example in the README runs, in order, and leaves nothing behind in the clone; its claims match the code.

Python blocks run in one namespace (the README is one tour) and ``sh`` blocks through bash, in document
order, from a temporary folder that mirrors the repository root (so ``fixtures/...`` and ``examples/...``
resolve as for a reader in the clone). A file a block writes there is a file it would leave in the clone.
"""
import os
import re
import subprocess
import sys

import pytest
from conftest import runs_keras_free_tests

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
README = os.path.join(ROOT, "README.md")
# blocks the tour does not run, and why: set-up (CI runs those), installing from PyPI, a 2 GB benchmark
NOT_RUN = {"bash": "set-up commands, checked against CI below", "shell": "installs or benchmarks"}


def blocks():
    """(language, code) of every fenced block, in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```", open(README).read(), flags=re.S | re.M)


def mirror(tmp_path):
    """A folder that looks like the repository root: its entries linked, and a .venv whose bin/ is ours."""
    for entry in os.listdir(ROOT):
        if entry not in (".git", ".venv"):
            os.symlink(os.path.join(ROOT, entry), tmp_path / entry)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    here = os.path.dirname(sys.executable)  # the interpreter (and `weightport`) running the tests
    (bin_dir / "activate").write_text(f'PATH="{here}:$PATH"; export PATH\n')
    os.symlink(os.path.join(here, "weightport"), bin_dir / "weightport")
    return tmp_path


def listing(folder):
    """Every path under ``folder`` (not following links into the repository), for before/after checks."""
    found = set()
    for base, dirs, files in os.walk(folder):
        found.update(os.path.relpath(os.path.join(base, n), folder) for n in dirs + files)
    return found


def repository_files(folders=("examples", "fixtures")):
    """What the linked repository folders hold: a block that writes into them writes into the clone."""
    return {f: sorted(os.listdir(os.path.join(ROOT, f))) for f in folders}


def test_every_readme_block_runs_in_order_and_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    pytest.importorskip("flax")
    pytest.importorskip("equinox")
    pytest.importorskip("transformers")  # the packed q/k/v example reads a small Bloom's file
    if not runs_keras_free_tests():  # the README picks torch (setdefault): a reader's tour runs on CI's first run
        pytest.skip("the README's tour runs under the backend it sets, KERAS_BACKEND=torch (CI's first run)")
    work = mirror(tmp_path)
    monkeypatch.chdir(work)
    runnable = [(lang, code) for lang, code in blocks() if lang not in NOT_RUN]
    assert {lang for lang, _ in runnable} == {"python", "sh"}, "a block in a language this test does not run"
    assert runnable[0][0] == "python" and "x_nchw =" in runnable[0][1]  # the first example is runnable
    before, repo_before = listing(work), repository_files()
    # twice, as a user repeating the tour would: nothing may depend on a clean folder
    for _ in range(2):
        namespace = {"__name__": "__readme__"}
        for lang, code in runnable:
            if lang == "python":
                exec(compile(code, README, "exec"), namespace)
            else:
                out = subprocess.run(["bash", "-e", "-c", code], capture_output=True, text=True, cwd=work,
                                     env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")})
                assert out.returncode == 0, f"{code}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
                assert "Traceback" not in out.stderr
            left = listing(work) - before
            assert not left, f"this block leaves files in the clone: {sorted(left)}\n{code}"
            assert repository_files() == repo_before, code


def test_readme_setup_commands_match_ci():
    setup = [code for lang, code in blocks() if lang == "bash"]
    assert len(setup) == 2
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert setup[1].strip() in ci


def test_blocks_not_run_are_only_installs_and_benchmarks():
    for lang, code in blocks():
        if lang == "shell":
            assert all(line.startswith(("pip install ", ".venv/bin/python benchmarks/"))
                       for line in code.strip().splitlines()), code


def test_supported_versions_match_pyproject_and_constraints():
    text = open(README).read()
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    pins = dict(re.findall(r"^([\w-]+)==([\w.+]+)", open(os.path.join(ROOT, "constraints.txt")).read(), flags=re.M))
    rows = dict((name, (low, tested)) for name, low, tested in
                re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+)", text, flags=re.M))
    assert f'requires-python = ">={rows["Python"][0]}"' in pyproject
    for row, dist in (("PyTorch", "torch"), ("Keras", "keras"), ("JAX", "jax"), ("Flax", "flax"),
                      ("Equinox", "equinox"), ("NumPy", "numpy")):
        low, tested = rows[row]
        assert f'"{dist}>={low}"' in pyproject, row
        assert pins[dist] == tested, row


def test_license_is_the_one_pyproject_names():
    assert 'license = { text = "Apache-2.0" }' in open(os.path.join(ROOT, "pyproject.toml")).read()
    text = open(os.path.join(ROOT, "LICENSE")).read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_no_claim_of_onnx_support_while_it_is_not_there():
    from weightport.converter.formats import MODULES

    text = open(README).read()
    if "onnx" not in MODULES:
        assert "ONNX is planned" in text or "ONNX**: planned" in text
        assert "[onnx]" not in text and ".onnx" not in text
