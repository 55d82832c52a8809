"""The public surface: every exported name exists, every public name is exported, and the
errors form the one hierarchy that errors.py documents."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import rh_agents
from rh_agents import errors


def _modules() -> list[str]:
    names = ["rh_agents"]
    for info in pkgutil.walk_packages(rh_agents.__path__, "rh_agents."):
        if info.name.endswith("__main__"):
            continue  # runs the command line when imported
        names.append(info.name)
    return sorted(names)


MODULES = _modules()
WITH_ALL = [name for name in MODULES if hasattr(importlib.import_module(name), "__all__")]


def test_every_public_module_declares_all() -> None:
    # Modules without __all__ only hold a command line or a package docstring.
    assert set(MODULES) - set(WITH_ALL) <= {
        "rh_agents.cli",
        "rh_agents.core",
        "rh_agents.integrations",
    }
    assert "rh_agents.core.actors" in WITH_ALL and "rh_agents.core.parallel.manager" in WITH_ALL


@pytest.mark.parametrize("module_name", WITH_ALL)
def test_every_name_in_all_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"duplicates in {module_name}.__all__"
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names what it does not define: {missing}"


def _defined_here(module: ModuleType) -> set[str]:
    """Public classes and functions whose home is ``module`` (not imported into it)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }


@pytest.mark.parametrize("module_name", WITH_ALL)
def test_every_public_definition_is_exported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    unexported = sorted(_defined_here(module) - set(module.__all__))
    assert unexported == [], (
        f"{module_name} defines public names missing from __all__ "
        f"(export them or prefix them with '_'): {unexported}"
    )


def test_package_exports_are_the_home_objects() -> None:
    homes = [importlib.import_module(name) for name in WITH_ALL if name != "rh_agents"]
    for name in rh_agents.__all__:
        if name == "__version__":
            continue
        value = getattr(rh_agents, name)
        assert any(getattr(home, name, None) is value for home in homes), name


def test_every_error_is_importable_from_the_package() -> None:
    missing = sorted(set(errors.__all__) - set(rh_agents.__all__))
    assert missing == [], f"errors not exported by rh_agents: {missing}"


def test_errors_form_one_hierarchy_under_rhagentserror() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert inspect.isclass(cls) and issubclass(cls, errors.RHAgentsError), name
        assert issubclass(cls, Exception), name
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


_TREE_LINE = re.compile(r"^(?P<lead>[ │├└─]*)(?P<name>\w+)(?: \((?P<extra>\w+)\))?")


def _documented_tree() -> dict[str, tuple[str | None, str | None]]:
    """{class: (documented parent, documented extra base)} parsed from errors.py's docstring."""
    doc = errors.__doc__ or ""
    tree: dict[str, tuple[str | None, str | None]] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        stripped = line.strip()
        if not (stripped == "RHAgentsError" or stripped.startswith(("├──", "└──", "│"))):
            continue
        match = _TREE_LINE.match(stripped)
        assert match is not None, line
        depth = len(line) - len(line.lstrip()) + len(match["lead"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        tree[match["name"]] = (stack[-1][1] if stack else None, match["extra"])
        stack.append((depth, match["name"]))
    return tree


def test_docstring_tree_matches_the_classes() -> None:
    tree = _documented_tree()
    assert set(tree) == set(errors.__all__)
    for name, (parent, extra) in tree.items():
        cls = getattr(errors, name)
        if parent is not None:
            assert getattr(errors, parent) in cls.__bases__, f"{name} should derive from {parent}"
        if extra is not None:
            assert extra in {base.__name__ for base in cls.__mro__}, f"{name} is not a {extra}"
