"""When a conversion shows a progress bar, and that a bar shows on a terminal that reports 0 columns."""
import io
import os

import pytest

from weightport import progress

BIG = progress.MIN_BYTES


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.fixture(autouse=True)
def undecided(monkeypatch):
    monkeypatch.setattr(progress, "forced", None)


@pytest.mark.parametrize("total,tty,forced,quiet,want", [
    (BIG, True, None, False, True),     # a terminal, a large output
    (BIG, False, None, False, False),   # a pipe or a log
    (BIG - 1, True, None, False, False),  # too small to be worth a bar
    (10, False, True, False, True),     # --progress
    (BIG, True, False, False, False),   # --no-progress
    (BIG, True, True, True, False),     # quiet=True in Python always wins
])
@pytest.mark.keras_free
def test_when_a_bar_is_wanted(monkeypatch, total, tty, forced, quiet, want):
    monkeypatch.setattr(progress, "forced", forced)
    assert progress.wanted(total, quiet, Stream(tty)) is want


@pytest.mark.keras_free
def test_a_terminal_reporting_zero_columns_still_gets_a_bar(monkeypatch):
    err = Stream(True)
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: os.terminal_size((0, 24)))
    bar = progress.bar(BIG, "model.safetensors")
    bar.update(BIG)
    bar.close()
    assert bar.ncols > 0 and "model.safetensors" in err.getvalue() and "100%" in err.getvalue()


def test_a_live_port_shows_a_bar_when_asked_and_none_when_quiet(monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    import weightport as wp

    t = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    monkeypatch.setattr(progress, "forced", True)
    wp.port(t, k)
    err = capsys.readouterr().err
    assert "port" in err and "100%" in err
    wp.port(t, k, quiet=True)
    assert "100%" not in capsys.readouterr().err
