"""Dependencies point one way: app, training and benchmarks build on model (the core); model imports none of
them; app imports neither training nor benchmarks; the product (model, app, training) never imports the tests.
``tests/support/`` is what tests and benchmarks start (the service as a process, a Ray cluster, the container
images, the service with a stand-in network): it may build on app and model, and it is the one part of ``tests/``
the benchmarks import. The benchmarks talk to the service over HTTP and use training's data readers and metrics,
the evaluation protocol they report in, but not its training loop (one exception:
``benchmarks/train_throughput.py`` measures the training loop itself). No test imports ``benchmarks/``: the tests of
the benchmark scripts (``tests/benchmarks/``) run them as their users do, in a subprocess."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "model": {"app", "training", "benchmarks", "tests"},
    "training": {"app", "benchmarks", "tests"},
    "benchmarks": {"app", "training.train", "tests"},
    "app": {"training", "benchmarks", "tests"},
    "tests/support": {"training", "benchmarks"},
    "tests": {"benchmarks"},
}

EXCEPT = {"benchmarks": "tests.support"}  # the servers and clusters benchmarks start, as the tests do
ALLOWED = {Path("benchmarks/train_throughput.py")}  # the training loop


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_the_wrong_way(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.relative_to(ROOT) in ALLOWED:
            continue
        for name in imported_modules(path):
            allowed = EXCEPT.get(package)
            if allowed and (name == allowed or name.startswith(allowed + ".")):
                continue
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_cli_is_a_shell_over_the_library():
    """app/cli.py runs model.Landmarker: no HTTP service, form parsers or HTTP errors (issue 30)."""
    http_only = {"app.service", "app.forms", "app.errors", "app.imaging", "app.batcher", "app.runners"}
    assert not imported_modules(ROOT / "app" / "cli.py") & http_only
