"""The README's Python examples run as written."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"

CHECKS = """
import json as _json
_table = result.table()
print("CHECKS " + _json.dumps(dict(columns=list(_table.columns), rows=len(_table),
                                   patents_shape=list(traj.observations.patents.shape))))
"""


@pytest.mark.slow
def test_the_library_examples_run(tmp_path):
    """In a fresh Python process, as a reader runs them (in this process the command-line tests
    have switched on a persistent compilation cache, which a reader's session does not have)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    script = tmp_path / "examples.py"
    script.write_text("\n".join(blocks) + CHECKS)  # the second uses the first's imports, as in one session
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checks = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("CHECKS "))[len("CHECKS "):])
    assert (tmp_path / "forecast.png").stat().st_size > 0
    assert checks["columns"] == ["region", "year", "mean", "lower", "upper"] and checks["rows"] == 6 * 5
    assert checks["patents_shape"] == [50, 55]
