"""The layering rule (README, "What is in the box"): scripts import libraries, never the reverse (a thin
script may hand over to another: train_step_*.py call train.py); no import circle; the longest chain of
project imports at most MAX_CHAIN modules; config.py imports no network code."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_CHAIN = 7
# entry points: run as commands, imported by no other module of the project (tests may)
SCRIPTS = {"train", "train_step_1_ae", "train_step_2_gan", "app", "export", "bench_speed", "portraits",
           "evaluate.generate_image_matrix", "evaluate.generate_mix", "evaluate.style_transfer",
           "evaluate.quality_curve", "sketch_styletransfer.train", "sketch_styletransfer.evaluate", "lpips.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: project modules it imports} (every import statement, function-local ones included)."""
    files = [p for p in ROOT.rglob("*.py")
             if not any(part.startswith(".") or part in ("tests", "__pycache__") for part in p.relative_to(ROOT).parts)]
    modules = {module_name(p): p for p in files}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0] if node.level > 1
                                                  else package, base]))
                found |= {resolve(base)} | {resolve(f"{base}.{a.name}" if base else a.name) for a in node.names}
        graph[name] = {m for m in found if m and m != name}
    return graph


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest path of imports (the graph has no circle: test_no_import_circle)."""
    memo: dict[str, list[str]] = {}

    def chain(m: str, seen: tuple = ()) -> list[str]:
        assert m not in seen, f"import circle: {' -> '.join((*seen, m))}"
        if m not in memo:
            memo[m] = [m, *max((chain(n, (*seen, m)) for n in graph[m]), key=len, default=[])]
        return memo[m]
    return max((chain(m) for m in graph), key=len)


def test_no_library_imports_a_script():
    graph = import_graph()
    assert SCRIPTS <= set(graph), SCRIPTS - set(graph)
    offenders = {m: sorted(graph[m] & SCRIPTS) for m in set(graph) - SCRIPTS if graph[m] & SCRIPTS}
    assert not offenders, f"libraries importing scripts: {offenders}"


def test_no_import_circle_and_a_short_longest_chain():
    chain = longest_chain(import_graph())
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_config_imports_no_network_code():
    graph = import_graph()
    tree = ast.parse((ROOT / "config.py").read_text(encoding="utf-8"))
    third_party = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    third_party |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in third_party and not graph["config"] - {"errors"}, graph["config"]
