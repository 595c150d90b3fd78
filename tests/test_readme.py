"""Every example in the README runs: its Python blocks in order, then its `weightport` command lines."""
import os
import re
import shlex
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def blocks(lang):
    text = open(README).read()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    monkeypatch.chdir(tmp_path)
    root = os.path.dirname(README)
    for folder in ("examples", "fixtures"):  # the README is followed from the repository root
        os.symlink(os.path.join(root, folder), tmp_path / folder)
    python = [b for b in blocks("python") if "torch_model = " in b or "wp." in b]
    first = python[0]
    assert "port(torch_model, keras_model)" in first
    # the first block in the README is the teaser (undefined names); the runnable tour starts at "Using it".
    # Run twice, as a user repeating the tour would: nothing may depend on a clean folder.
    for _ in range(2):
        namespace = {}
        for code in python[1:]:
            exec(compile(code, README, "exec"), namespace)
    cli = os.path.join(os.path.dirname(sys.executable), "weightport")
    for block in blocks("sh"):
        for line in block.strip().splitlines():
            args = shlex.split(line)
            assert args[0] == "weightport"
            out = subprocess.run([cli] + args[1:], capture_output=True, text=True)
            assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"


def test_readme_setup_commands_match_ci():
    setup = blocks("bash")
    assert len(setup) == 2
    ci = open(os.path.join(os.path.dirname(README), ".ci", "run")).read()
    assert setup[1].strip() in ci
