"""The package's layers: no import circle, each layer imports only the layers below it, and
no module grows past ~400 lines."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fgrad"
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module → the fgrad modules it imports (at any depth in the file)."""
    graph = {}
    for path in PKG.rglob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[_module(path)] = {d for d in deps if d.split(".")[0] == "fgrad"}
    return graph


def _layer(module: str) -> int:
    """0 core, models and data (fgrad._*); 1 training; 2 analysis; 3 experiments (lab)."""
    sub = module.split(".")[1] if "." in module else ""
    return {"train": 1, "analysis": 2, "lab": 3}.get(sub, 4 if sub == "__main__" else 0)


def test_no_import_circle():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(m, stack):
        if state.get(m) == 1:
            raise AssertionError(f"import circle: {' -> '.join(stack + [m])}")
        if state.get(m) == 2 or m not in graph:
            return
        state[m] = 1
        for d in sorted(graph[m]):
            visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_each_layer_imports_only_layers_below_it():
    for module, deps in _imports().items():
        for d in deps:
            if d == "fgrad" and module.count(".") == 0:
                continue
            assert _layer(d) <= _layer(module), f"{module} (layer {_layer(module)}) imports {d}"
            if _layer(module) == 0:
                assert _layer(d) == 0, f"the library module {module} imports {d}"


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
