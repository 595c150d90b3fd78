"""Shared test set-up: a Keras backend (torch unless KERAS_BACKEND says otherwise) and fixed seeds."""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(1234)
    try:
        import torch

        torch.manual_seed(1234)
    except ImportError:
        pass
    yield
