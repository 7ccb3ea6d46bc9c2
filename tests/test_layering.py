"""The floors of README's architecture table, checked by reading every module's imports.

A module may import modules on its own floor or below, never above. Every ``import`` statement counts,
also those inside functions (a lazy import is still a dependency); ``if TYPE_CHECKING:`` imports too.
``esper_fast/__init__.py`` (the package face, floor 6) may import anything; no module below may import it.
There are no exceptions: every module is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "esper_fast"

# Module-name prefix -> floor; the longest matching prefix wins. Keep in step with README.md.
FLOORS: dict[str, int] = {
    "esper_fast.constants": 1,
    "esper_fast.constants_v2": 1,
    "esper_fast.errors": 1,
    "esper_fast.types": 1,
    "esper_fast.version": 1,
    "esper_fast.rules": 1,
    "esper_fast.plotting": 1,
    "esper_fast.reference": 2,
    "esper_fast.ops": 2,
    "esper_fast.reference_policy": 3,  # ReferencePolicy is a FactoredNetwork: the policy floor
    "esper_fast.network": 3,
    "esper_fast.network_v2": 3,
    "esper_fast.policy": 3,
    "esper_fast.policy_v2": 3,
    "esper_fast.fused_evaluate": 3,
    "esper_fast.envs": 3,
    "esper_fast.registration": 3,
    "esper_fast.ppo": 4,
    "esper_fast.integrations.esper_checkpoint": 4,
    "esper_fast.cli": 5,
    "esper_fast.__main__": 5,
    "esper_fast.bench": 5,
    "esper_fast.studies": 5,
    "esper_fast.integrations": 5,
    "esper_fast": 6,  # the package face (esper_fast/__init__.py)
}


def floor_of(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise KeyError(f"{module} has no floor: add it to FLOORS (and to README's architecture table)")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every esper_fast module ``path`` imports (``from pkg import sub`` counts as ``pkg.sub``);
    ``source`` replaces the file's text (the mutant check)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for a in node.names:
                found.add(f"{origin}.{a.name}" if is_module(f"{origin}.{a.name}") else origin)
    return {m for m in found if m == "esper_fast" or m.startswith("esper_fast.")}


MODULES = sorted(PACKAGE.rglob("*.py"))


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    me = module_name(path)
    mine = floor_of(me)
    return sorted(
        f"{m} (floor {floor_of(m)})" for m in imported_modules(path, source) if floor_of(m) > mine and m != me
    )


@pytest.mark.parametrize("path", [pytest.param(p, id=module_name(p)) for p in MODULES])
def test_no_module_imports_from_a_floor_above_it(path):
    me = module_name(path)
    assert not upward_imports(path), f"{me} (floor {floor_of(me)}) imports {upward_imports(path)}"


def test_every_module_has_a_floor():
    for path in MODULES:
        floor_of(module_name(path))


def test_the_checker_sees_lazy_relative_and_package_imports():
    """Mutant check: upward imports inside a function, relative ones and the package face are all found."""
    path = PACKAGE / "ops" / "select.py"
    assert upward_imports(path) == []
    mutants = {
        "def _m():\n    from esper_fast.ppo import trainer\n": "esper_fast.ppo.trainer (floor 4)",
        "from ..policy import FactoredPolicy\n": "esper_fast.policy (floor 3)",
        "def _m():\n    import esper_fast\n": "esper_fast (floor 6)",
    }
    for extra, expected in mutants.items():
        assert upward_imports(path, path.read_text() + "\n" + extra) == [expected], extra


def test_the_rules_sit_above_the_constants_and_below_reference_and_kernels():
    """esper_fast.rules (floor 1) builds only on constants / types / errors, and nothing else on floor 1
    imports it (so the rules are one step above the plain definitions); reference and ops use it."""
    rules = PACKAGE / "rules.py"
    assert imported_modules(rules) <= {"esper_fast.constants", "esper_fast.types", "esper_fast.errors"}
    for name in ("constants.py", "constants_v2.py", "errors.py", "types.py", "version.py"):
        assert "esper_fast.rules" not in imported_modules(PACKAGE / name), name
    assert "esper_fast.rules" in imported_modules(PACKAGE / "reference" / "actions.py")
    assert "esper_fast.rules" in imported_modules(PACKAGE / "ops" / "actions.py")


def _readme_floors() -> dict[str, int]:
    """README's architecture table: module path -> floor (relative names resolve against the row's
    first path's folder)."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text()
    start = readme.index("| floor | module | job |")
    out: dict[str, int] = {}
    for row in readme[start : readme.index("\n\n", start)].splitlines()[2:]:
        cells = row.split("|")
        floor, base = int(cells[1]), ""
        for name in re.findall(r"`([^`]+)`", cells[2]):
            if name.startswith("esper_fast/"):
                base = name.rsplit("/", 1)[0] + "/"
                out[name] = floor
            elif name.endswith((".py", "/")) and base:
                out[("esper_fast/" + name) if "/" in name.rstrip("/") else base + name] = floor
    return out


def test_readme_architecture_table_names_every_module_on_its_floor():
    table = _readme_floors()
    for path in MODULES:
        rel = str(path.relative_to(PACKAGE.parent))
        named = [p for p in table if rel == p or (p.endswith("/") and rel.startswith(p))]
        assert named, f"{rel} is not in README's architecture table"
        best = max(named, key=len)
        assert table[best] == floor_of(module_name(path)), (
            f"{rel}: README floor {table[best]}, test floor {floor_of(module_name(path))}"
        )
