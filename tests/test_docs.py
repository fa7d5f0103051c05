"""The examples in the docstrings run and print what they show."""
import doctest

import pytest

import fastbn
from fastbn import _api, _backends, _config, _fold, _planner, _threads, reference

MODULES = [_api, _backends, _config, _fold, _planner, _threads, reference]


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("name", fastbn.__all__)
def test_every_public_function_has_an_example(name):
    obj = getattr(fastbn, name)
    if name == "NormCache":
        assert "Attributes" in obj.__doc__
    else:
        assert ">>>" in obj.__doc__


def _readme_python_blocks():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run():
    blocks = _readme_python_blocks()
    assert len(blocks) >= 4
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    fastbn.set_num_threads(None)
