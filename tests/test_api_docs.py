"""The public API documents itself: every parameter, what it returns, what it raises; and it ships py.typed."""
import inspect
import os
import re

import pytest

import weightport as wp
from weightport import errors

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

PUBLIC = [wp.port, wp.convert, wp.save, wp.load, wp.get_weights, wp.set_weights, wp.verify]


def sections(doc):
    """{'Args': text, 'Returns': text, 'Raises': text} of a Google-style docstring."""
    parts = re.split(r"^\s*(Args|Returns|Raises):\s*$", doc, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f.__name__)
def test_docstring_has_args_returns_raises(func):
    doc = inspect.getdoc(func)
    found = sections(doc)
    assert set(found) == {"Args", "Returns", "Raises"}, func.__name__
    documented = set(re.findall(r"^    (\w+):", found["Args"], flags=re.M))
    assert documented == set(inspect.signature(func).parameters), func.__name__
    raised = set(re.findall(r"^    (\w+Error):", found["Raises"], flags=re.M))
    assert raised and all(issubclass(getattr(errors, name), errors.WeightportError) for name in raised), raised
    assert found["Returns"].strip()


def test_the_package_ships_py_typed_and_annotated_returns():
    root = os.path.dirname(wp.__file__)
    assert os.path.exists(os.path.join(root, "py.typed"))
    pyproject = open(os.path.join(root, "..", "pyproject.toml")).read()
    assert re.search(r'^\[tool\.setuptools\.package-data\]\nweightport = \["py\.typed"\]', pyproject, flags=re.M)
    for func in PUBLIC:
        if func is not wp.set_weights:  # returns the layer's own type: any framework's object
            assert inspect.signature(func).return_annotation is not inspect.Signature.empty, func.__name__
