"""The package's layers, as ``proveniq_core``'s docstring draws them, hold in the imports."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import proveniq_core

SRC = Path(proveniq_core.__file__).parent
# A row of the drawing: indented names joined by " · ", two spaces, then what they are.
_ROW = re.compile(r"^    (\w+(?: · \w+)*) {2,}\S")


def rows() -> list[list[str]]:
    """The drawing's rows, top to bottom: the names on each layer."""
    return [
        match.group(1).split(" · ")
        for line in (proveniq_core.__doc__ or "").splitlines()
        if (match := _ROW.match(line))
    ]


def heights() -> dict[str, int]:
    """Each top-level module or package the drawing names, with its layer (0 = the bottom)."""
    drawn = rows()
    height = {name: len(drawn) - 1 - i for i, names in enumerate(drawn) for name in names}
    height["__main__"] = height["cli"]  # ``python -m proveniq_core`` is the command line
    return height


def units() -> set[str]:
    """The top-level modules of ``proveniq_core``, and its packages that hold code."""
    found = {path.stem for path in SRC.glob("*.py") if path.stem != "__init__"}
    return found | {
        path.parent.name
        for path in SRC.glob("*/**/*.py")
        if path.name != "__init__.py" or path.read_text().strip()
    }


def unit_of(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module or package) of each ``proveniq_core`` import, lazy ones too."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "proveniq_core":
                names = [f"proveniq_core.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "proveniq_core" and len(parts) > 1:
                yield node.lineno, parts[1]


def test_every_module_and_package_stands_on_a_layer() -> None:
    """The drawing places every top-level module and package, and nothing twice."""
    names = [name for row in rows() for name in row]
    assert len(names) >= 10, "the drawing in proveniq_core/__init__.py is gone"
    assert sorted(names) == sorted(set(names))
    assert units() - heights().keys() == set()


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    """No module of ``proveniq_core`` imports a package or module drawn above its own."""
    height = heights()
    climbs = [
        f"{path.relative_to(SRC.parent)}:{line} ({unit_of(path)}) imports {target}"
        for path in sorted(SRC.rglob("*.py"))
        for line, target in imports(path)
        if height.get(target, -1) > height.get(unit_of(path), len(height))
    ]
    assert climbs == []
