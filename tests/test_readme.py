"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_the_library_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # the second uses the first's imports, as a reader would in one session
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "forecast.png").stat().st_size > 0
    table = namespace["result"].table()
    assert list(table.columns) == ["region", "year", "mean", "lower", "upper"] and len(table) == 6 * 5
    assert namespace["traj"].observations.patents.shape == (50, 55)
