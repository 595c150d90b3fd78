"""Shared test set-up: a Keras backend (torch unless KERAS_BACKEND says otherwise), fixed seeds, and the
``keras_free`` marker.

CI runs the suite twice, ``KERAS_BACKEND=torch`` then ``KERAS_BACKEND=jax``. A test that never imports Keras
(file formats, the exit-code table, shard workers...) computes the same thing both times, so one marked
``keras_free`` runs under torch only. The mark is checked, not trusted: while such a test runs, Keras cannot be
imported (``sys.modules["keras"]`` and its submodules are None, so ``import keras`` fails and the library's frameworks see no Keras)
and KERAS_BACKEND names no backend (a child process that imports Keras fails). A test that does touch Keras
therefore fails under torch instead of quietly losing its jax run. A test marked ``backend_neutral`` uses Keras
but checks nothing backend-specific beyond a sibling that runs under every backend (a variant of the same file, a
refusal's words); it too runs once, to keep the suite's time. ``WEIGHTPORT_TEST_EVERY_BACKEND=1`` runs the
marked tests under any backend.
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(__file__))
# XLA compiles a program for every new shape (each Keras initializer, each eager scan): at its default LLVM
# optimisation that compiling was most of the jax run's time, for programs that then run once on tiny tensors.
# Level 0 compiles about 3x faster (measured on the ViT test); read when jax first computes, children inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

KERAS_FREE_BACKEND = "torch"  # the backend whose run keeps the keras_free tests (CI's first run)
KERAS_PACKAGES = ("keras", "keras_hub", "tf_keras")
NO_BACKEND = "none (this test is marked keras_free)"


def pytest_configure(config):
    config.addinivalue_line("markers", "keras_free: never imports Keras, in this process or a child; runs under "
                                       f"KERAS_BACKEND={KERAS_FREE_BACKEND} only (see conftest.py)")
    config.addinivalue_line("markers", "backend_neutral: uses Keras, but what it checks beyond a sibling test that "
                                       "runs under every backend (a naming, a refusal, a variant of the same file) "
                                       f"does not depend on the backend; runs under KERAS_BACKEND={KERAS_FREE_BACKEND}"
                                       " only, to keep the suite's time")


def runs_keras_free_tests() -> bool:
    return os.environ["KERAS_BACKEND"] == KERAS_FREE_BACKEND or bool(os.environ.get("WEIGHTPORT_TEST_EVERY_BACKEND"))


def pytest_collection_modifyitems(config, items):
    if runs_keras_free_tests():
        return
    once = ("keras_free", "backend_neutral")
    kept = [item for item in items if not any(item.get_closest_marker(m) for m in once)]
    dropped = [item for item in items if any(item.get_closest_marker(m) for m in once)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        config.stash[DROPPED] = len(dropped)


DROPPED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, config):
    dropped = config.stash.get(DROPPED, 0)
    if dropped:
        terminalreporter.write_line(f"{dropped} keras_free and backend_neutral tests deselected under KERAS_BACKEND="
                                    f"{os.environ['KERAS_BACKEND']}: they never import Keras (or check nothing "
                                    "backend-specific that a sibling does not) and ran under "
                                    f"KERAS_BACKEND={KERAS_FREE_BACKEND} (WEIGHTPORT_TEST_EVERY_BACKEND=1 runs them)")


@pytest.fixture(autouse=True)
def _keras_free_guard(request, monkeypatch):
    """A ``keras_free`` test that imports Keras fails, here or in a child process."""
    if request.node.get_closest_marker("keras_free") is not None:
        for name in [n for n in sys.modules if n.split(".")[0] in KERAS_PACKAGES] or ["keras"]:
            monkeypatch.setitem(sys.modules, name, None)  # submodules too: `from keras.src.x import y` reads them
        monkeypatch.setenv("KERAS_BACKEND", NO_BACKEND)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """``pytest.importorskip("keras")`` in a ``keras_free`` test would skip it under every backend: a failure."""
    report = yield
    if report.skipped and item.get_closest_marker("keras_free") is not None and "keras" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"marked keras_free, yet skipped for want of Keras (drop the mark): {report.longrepr}"
    return report


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(1234)
    try:
        import torch

        torch.manual_seed(1234)
    except ImportError:
        pass
    yield
