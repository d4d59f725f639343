"""Dependencies point one way: app, training and benchmarks build on model (the core); model imports none of
them; app imports neither training nor benchmarks; nothing imports the tests. The benchmarks talk to the service
over HTTP (``benchmarks.server`` starts it as a process) and use training's data readers and metrics, the
evaluation protocol they report in, but not its training loop. One exception: ``benchmarks/stand_in.py`` *is* a
server (the service with a stand-in network, for front-end benchmarks), so it starts the app; and
``benchmarks/train_throughput.py`` measures the training loop itself, so it builds one."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "model": {"app", "training", "benchmarks", "tests"},
    "training": {"app", "benchmarks", "tests"},
    "benchmarks": {"app", "training.train", "tests"},
    "app": {"training", "benchmarks", "tests"},
}

ALLOWED = {Path("benchmarks/stand_in.py"), Path("benchmarks/train_throughput.py")}  # a server; the training loop


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
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)
