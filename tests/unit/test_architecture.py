"""docs/architecture.md stays true: the paths it names exist, it names every module of epp/ and plugins/, and
no module grows much past 400 lines."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "architecture.md").read_text()
#: modules allowed past the limit, each with its reason
LONG_MODULES: dict[str, str] = {}
LINE_LIMIT = 420


def product_modules() -> list[Path]:
    found = sorted((REPO / "plugins").glob("*.py"))
    found += [p for p in sorted((REPO / "epp").rglob("*.py")) if not p.resolve().is_relative_to(REPO / "plugins")]
    return [p for p in found if p.name != "__init__.py"]


def test_every_path_named_exists() -> None:
    named = set(re.findall(r"`((?:epp|plugins|tests|docs|vllmsim|kubesim)/[\w./]*)`", DOC))
    assert len(named) > 30
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_module_is_placed() -> None:
    def placed(path: Path) -> bool:
        relative = path.relative_to(REPO).as_posix()
        folder = path.parent.relative_to(REPO).as_posix() + "/"
        return f"`{relative}`" in DOC or (f"`{folder}`" in DOC and re.search(rf"\b{path.stem}\b", DOC) is not None)

    unplaced = [p.relative_to(REPO).as_posix() for p in product_modules() if not placed(p)]
    assert not unplaced, f"docs/architecture.md does not say where these live: {unplaced}"


def test_no_module_is_much_over_400_lines() -> None:
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in product_modules()}
    sizes.update({p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in REPO.glob("*sim/*.py")})
    long = {path: lines for path, lines in sizes.items() if lines > LINE_LIMIT and path not in LONG_MODULES}
    assert not long, f"split these modules (limit ~400 lines): {long}"


def test_settings_and_plugin_contract_declare_no_any() -> None:
    """Every settings module, the flag parser and the plugin contract sit under mypy's disallow_any_explicit."""
    overrides = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    strict = {m for o in overrides if o.get("disallow_any_explicit") for m in o["module"]}
    settings = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "epp").rglob("settings.py")}
    assert len(settings) >= 3
    contract = {"epp.flags", "epp.units", "epp.scheduling.plugin", "epp.scheduling.types", "epp.scheduling.registry"}
    contract.add("epp.scheduling.framework")
    missing = sorted((settings | contract) - strict)
    assert not missing, f"add to the disallow_any_explicit override in pyproject.toml: {missing}"
