"""Writing files so that a file that exists is complete, and a run's outputs appear together.

`atomic_path` writes one file under a temporary name and renames it into place. `RunOutputs`
stages every output of a command in a hidden folder and moves them into the run folder only when
the command succeeds, `summary.json` last: a run folder never holds a complete-looking
`forecast.csv` from a command that failed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON (NumPy and JAX arrays as lists), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    if hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


class RunOutputs:
    """The outputs of one command, staged and moved into `folder` together on success.

    ```python
    with RunOutputs(folder) as out:
        frame.to_csv(out.path("forecast.csv"), index=False)
        out.finish(summary)  # moves every staged file into `folder`, then writes summary.json
    ```

    Leaving the block without `finish` (an error, an interruption) removes the staged files.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.staging = self.folder / ".staging"

    def __enter__(self) -> RunOutputs:
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a run that was killed
        self.staging.mkdir()
        return self

    def path(self, name: str) -> Path:
        """Where to write the output `name` now; it reaches the run folder at `finish`."""
        return self.staging / name

    def finish(self, summary: dict) -> None:
        """Move every staged file into the run folder, then write `summary.json`, last."""
        for staged in sorted(self.staging.iterdir()):
            os.replace(staged, self.folder / staged.name)
        write_json(self.folder / "summary.json", summary)

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
