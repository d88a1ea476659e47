"""The README's Python blocks run, in order, in one namespace (as a reader pastes them into one Python prompt).

A block whose first line starts with `# (sketch` needs what the tests do not install (Keras) and is skipped;
every other block must run as printed.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKETCH = "# (sketch"


def python_blocks(text):
    """Every ```python ... ``` block of `text`, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_blocks_and_marks_its_sketches():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5
    assert sum(b.startswith(SKETCH) for b in blocks) <= 1, "every block but the Keras one should run"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)                       # the blocks write ckpt.npz, gates.svg
    namespace = {"__name__": "readme"}
    for i, block in enumerate(python_blocks(README.read_text())):
        if block.startswith(SKETCH):
            continue
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}") from e
