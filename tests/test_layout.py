"""The house rules that the code's layout keeps: Ray only where actors are made, small classes and functions."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grf_stream", "actors", "trainer")
RAY_ALLOWED = {"grf_stream/serve.py"}  # the server's wiring; actors/ and trainer/ (Ray Train) are Ray's own rooms


def sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):  # function-local imports included
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_ray_is_imported_only_by_the_actors_the_trainer_and_the_server():
    users = [str(path.relative_to(ROOT)) for path in sources("grf_stream") if "ray" in imported(ast.parse(path.read_text()))]
    assert set(users) <= RAY_ALLOWED, f"import ray only in actors/ (a thin wrapper) or {sorted(RAY_ALLOWED)}"


@pytest.mark.parametrize("kind,limit", [(ast.ClassDef, 160), ((ast.FunctionDef, ast.AsyncFunctionDef), 55)])
def test_no_class_or_function_grows_past_a_page(kind, limit):
    too_long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                for path in sources(*PACKAGES) for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, kind) and node.end_lineno - node.lineno + 1 > limit]
    assert not too_long, f"split by job: {too_long}"
