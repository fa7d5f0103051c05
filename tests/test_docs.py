"""The examples in the docstrings run and print what they show."""
import doctest

import pytest

import fastbn
from fastbn import (_api, _backends, _config, _fold, _memory, _moments, _planner, _threads, layers,
                    reference)

MODULES = [_api, _backends, _config, _fold, _memory, _moments, _planner, _threads, layers, reference]


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


README_WORD_LIMIT = 1200  # the README is a front door; internals go to docs/


def _readme():
    import pathlib

    return (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_stays_short():
    """Words outside code blocks: the README is read, the code blocks are run."""
    import re

    prose = re.sub(r"```.*?```", "", _readme(), flags=re.S)
    assert len(prose.split()) <= README_WORD_LIMIT


def test_readme_first_screen_has_the_setup_an_example_and_a_plot():
    """Before the first section: the two set-up commands, a short example that runs (checked by
    test_readme_examples_run), and one image."""
    import re

    first = _readme().split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", first, flags=re.S)
    assert len(commands) == 1 and len(commands[0].strip().splitlines()) == 2
    assert 'pip install ".[test]" mpi4py mpich scikit-learn && pytest' in commands[0]
    (example,) = re.findall(r"```python\n(.*?)```", first, flags=re.S)
    assert len(example.strip().splitlines()) <= 10
    assert len(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", first)) == 1


def test_readme_links_point_at_files_of_the_tree():
    """Relative links and images (docs/, examples/, LICENSE) exist: the sdist ships them too."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    targets = re.findall(r"\]\(([^)#]+)\)", _readme())
    relative = [t for t in targets if "://" not in t]
    assert relative
    for target in relative:
        assert (root / target).exists(), f"README links to {target}, which is not in the tree"
