"""How the command ends: one exit-code table, no tracebacks unless --debug, quiet on a closed pipe, CLI words."""
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import weightport as wp
from weightport import cli, exits
from weightport.converter.formats import write_checkpoint

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

ROOT = os.path.join(os.path.dirname(__file__), "..")
CLI = os.path.join(os.path.dirname(sys.executable), "weightport")
BUILDERS = '''
def broken():
    raise RuntimeError("boom from the model builder")
'''


def run(*args, cwd, **kw):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, **kw)


@pytest.fixture
def workdir(tmp_path):
    write_checkpoint(tmp_path / "lin.safetensors", {"proj.weight": np.ones((5, 7), "float32"),
                                                    "proj.bias": np.zeros(5, "float32")})
    write_checkpoint(tmp_path / "bare.safetensors", {"proj.weight": np.ones((5, 7), "float32")})
    (tmp_path / "builders.py").write_text(BUILDERS)
    return tmp_path


# -- the table ---------------------------------------------------------------------------


@pytest.mark.parametrize("exc,code", [
    (wp.ShapeMismatchError("x"), 1), (wp.MatchError("x"), 1), (wp.OutputExistsError("x"), 1),
    (wp.AmbiguityError("x"), 1),  # a refusal, though also a UsageError for Python callers
    (wp.UsageError("x"), 2), (wp.FormatError("x"), 2), (wp.UnsafePickleError("x"), 2),
    (FileNotFoundError(2, "No such file"), 2), (PermissionError(13, "denied"), 2),
    (RuntimeError("x"), 3), (KeyError("x"), 3), (KeyboardInterrupt(), 130), (BrokenPipeError(), 141)])
def test_each_exception_maps_to_one_code(exc, code):
    assert exits.exit_code(exc) == code


def test_the_table_is_in_help_and_in_the_readme():
    helped = run("--help", cwd=ROOT)
    readme = open(os.path.join(ROOT, "README.md")).read()
    for code, meaning, _ in exits.EXIT_CODES:
        assert re.search(rf"^  {code}\s+{re.escape(meaning)}$", helped.stdout, flags=re.M), code
        assert f"| {code} | {meaning} |" in readme, code
    assert "exit codes" in run("convert", "--help", cwd=ROOT).stdout


def test_ambiguity_is_a_refusal_in_cli_words(workdir):
    out = run("convert", "bare.safetensors", "out.safetensors", "--to", "keras", cwd=workdir)
    assert out.returncode == 1, out.stderr
    assert "several rules" in out.stderr and "pass --model or --like" in out.stderr
    assert "model=" not in out.stderr and "Traceback" not in out.stderr
    assert not (workdir / "out.safetensors").exists()
    with pytest.raises(wp.UsageError, match="pass model= or like="):  # Python callers read Python
        wp.convert(workdir / "bare.safetensors", workdir / "out.safetensors", to="keras")


def test_a_weightport_error_prints_one_message_and_debug_a_traceback(workdir):
    plain = run("inspect", "missing.pt", cwd=workdir)
    assert (plain.returncode, plain.stderr) == (2, "weightport: missing.pt: no such file; check the path\n")
    for args in (("--debug", "inspect", "missing.pt"), ("inspect", "missing.pt", "--debug")):
        debug = run(*args, cwd=workdir)
        assert debug.returncode == 2 and "Traceback" in debug.stderr and "FormatError" in debug.stderr
        assert debug.stderr.rstrip().endswith("no such file; check the path")


def test_an_unexpected_error_is_one_line_and_a_hint_with_its_own_code(workdir):
    out = run("convert", "lin.safetensors", "o.safetensors", "--model", "builders.py:broken", cwd=workdir)
    assert out.returncode == exits.UNEXPECTED == 3
    assert "Traceback" not in out.stderr
    first, hint = out.stderr.splitlines()
    assert first == "weightport: unexpected error: RuntimeError: boom from the model builder"
    assert "--debug" in hint and "weightport --version" in hint
    debug = run("convert", "lin.safetensors", "o.safetensors", "--model", "builders.py:broken", "--debug",
                cwd=workdir)
    assert debug.returncode == 3 and "Traceback" in debug.stderr and 'raise RuntimeError("boom' in debug.stderr


def test_existing_output_is_refused_with_the_cli_option(workdir):
    (workdir / "taken.safetensors").write_bytes(b"keep")
    out = run("convert", "lin.safetensors", "taken.safetensors", "--to", "keras", cwd=workdir)
    assert out.returncode == 1 and "--overwrite" in out.stderr and "overwrite=True" not in out.stderr
    assert (workdir / "taken.safetensors").read_bytes() == b"keep"


def test_argument_errors_are_usage_errors(workdir):
    for args in (("convert", "lin.safetensors", "o.safetensors", "--dtype", "int8"),
                 ("convert", "lin.safetensors", "o.safetensors", "--dtype", "bfloat17"), ("nonsense",)):
        out = run(*args, cwd=workdir)
        assert out.returncode == 2 and "Traceback" not in out.stderr, args
    out = run("convert", "lin.safetensors", "o.safetensors", "--dtype", "int8", cwd=workdir)
    assert "--dtype int8 is not a floating dtype" in out.stderr


# -- a closed pipe ---------------------------------------------------------------------------


def into_closed_pipe(*args, cwd):
    """Run with standard output a pipe whose reader has already gone, as `| head` leaves it."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([CLI, *map(str, args)], stdout=write, stderr=subprocess.PIPE, text=True, cwd=cwd)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [("inspect", "lin.safetensors"), ("inspect", "lin.safetensors", "--json"),
                                  ("rules",), ("rules", "--json"), ("--version",), ("--help",)])
def test_a_closed_pipe_ends_quietly(workdir, args):
    out = into_closed_pipe(*args, cwd=workdir)
    assert out.stderr == ""
    assert out.returncode == exits.BROKEN_PIPE or args == ("--help",) and out.returncode == 0  # argparse swallows it


def test_head_in_a_shell_pipeline(workdir):
    many = {f"block{i}.proj.weight": np.zeros((3, 2), "float32") for i in range(4000)}
    write_checkpoint(workdir / "many.safetensors", many)  # more output than a pipe buffers
    for pipeline in (f"{CLI} inspect many.safetensors | head -2", f"{CLI} inspect many.safetensors --json | head -c 100",
                     f"{CLI} rules | head -1"):
        out = subprocess.run(["bash", "-c", pipeline + "; echo \" status=${PIPESTATUS[0]}\""], capture_output=True,
                             text=True, cwd=workdir)
        assert out.stderr == "", pipeline
        assert re.search(r"status=(0|141)$", out.stdout.strip()), out.stdout[-200:]


# -- words ----------------------------------------------------------------------------------


@pytest.mark.parametrize("python,command", [
    ("pass model= (the checkpoint's own model)", "pass --model (the checkpoint's own model)"),
    ("pass model= or like= to say which", "pass --model or --like to say which"),
    ("pass to='torch' or to='keras'", "pass --to torch or --to keras"),
    ("Pass hints={source_path: target_path}, or strict=False to copy", "Pass --hint SOURCE=TARGET, or --partial to copy"),
    ("pass trust_pickle=True (CLI: --trust-pickle); better", "pass --trust-pickle; better"),
    ("Pass overwrite=True to replace it", "Pass --overwrite to replace it"),
    ("dtype='int8' is not floating", "--dtype int8 is not floating"),
    ("<Checkpoint format=safetensors>", "<Checkpoint format=safetensors>"),  # a value shown, not advice
    ("source_model= stays", "source_model= stays"),
])
def test_cli_words(python, command):
    assert exits.cli_words(python) == command


def test_warnings_are_one_line_in_cli_words(capsys):
    with warnings.catch_warnings():
        warnings.showwarning = cli.show_warning
        warnings.warn("epsilon differs; pass model= to check", wp.WeightportWarning)
    assert capsys.readouterr().err == "weightport: warning: epsilon differs; pass --model to check\n"


# -- version ----------------------------------------------------------------------------------


def test_version_names_weightport_and_the_frameworks():
    out = run("--version", cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith(f"weightport {wp.__version__} (Python ")
    assert "numpy " in out.stdout
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert re.search(rf'^version = "{re.escape(wp.__version__)}"$', pyproject, flags=re.M)
