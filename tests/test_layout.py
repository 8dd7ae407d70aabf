"""The layout docs/design.md describes: each stage imports only the stages before it, and no
module grows past 400 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "diffcomm"
ORDER = ["errors", "files", "sharding", "params", "archetypes", "inputs", "effects", "config", "data", "state",
         "observation", "edges",
         "model", "simulate", "scenario", "loss", "domains", "training", "laplace", "fitting", "calibrate",
         "calibrate_domains", "whitening", "posterior",
         "baselines", "filtering", "forecast", "ensemble", "evaluation", "policy", "comparison", "report", "apps", "cli"]
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def stage(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def runtime_imports(path: Path) -> set[str]:
    """The stages `path` imports when it runs (imports under `if TYPE_CHECKING:` are for annotations)."""
    tree = ast.parse(path.read_text())
    checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                for node in ast.walk(block)}
    found = set()
    depth = len(path.relative_to(PACKAGE).parts)  # 1 in the package, 2 in a subpackage
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in checking:
            if node.level == depth:  # from the package root: from .x / from ..x
                target = (node.module or "").split(".")[0]
                found |= {target} if target else {alias.name for alias in node.names}
    return found - {stage(path)}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_stage_imports_only_the_stages_before_it(path):
    here = ORDER.index(stage(path))
    later = sorted(s for s in runtime_imports(path) if ORDER.index(s) >= here)
    assert not later, f"{path.relative_to(PACKAGE)} imports {later}, which come after it"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def test_every_module_has_its_place():
    assert {stage(p) for p in MODULES} <= set(ORDER)
