"""The engine's shape, checked on the sources: no import cycle in the package, one module
decides how layers run, and the kernels' entry points take descriptions rather than dozens of
arrays. These read the source files of the checkout the tests live in (skipped when the tests
run without it)."""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rnnc"
pytestmark = pytest.mark.skipif(not (ROOT / "_engine" / "plan.py").exists(),
                                reason="needs rnnc's source tree")


def module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path):
    """rnnc modules imported anywhere in the file (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rnnc"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("rnnc"):
                for a in node.names:    # `from rnnc.x import y`: y may be a module
                    found.add(f"{base}.{a.name}")
                found.add(base)
    return found


def package_graph():
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imp in imports_of(path):
            while imp and imp not in modules:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def test_package_has_no_import_cycle():
    graph = package_graph()
    # A package's __init__ importing its own submodules is not a cycle of the code's layers.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not (name == d.rpartition(".")[0]
                                               and name + "." in d + ".")}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + "."):
                continue        # a package importing its own submodule
            if state.get(dep) == "open" and not node.startswith(dep + "."):
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


THRESHOLDS = re.compile(r"\b(CHUNK_ELEMENTS|SMALL_GEMM_\w+|PACKED_PROJECTION_\w+|"
                        r"PARALLEL_MIN_WORK|SPLIT_MIN_\w+|SPLIT_IN_PLACE_\w+|FUSED_(MIN|MAX)_\w+|"
                        r"FUSED_WEIGHTS_PER_ROW|ROW_SPLIT_MIN_BATCH|PIPELINE_\w+|"
                        r"TRAIN_SPLIT_\w+|STREAM_SPLIT_\w+|cached_num_threads|has_small_gemm)\b")


def test_only_the_plan_module_reads_thresholds_and_the_machine():
    """Strategy and kernel choices read the tuning constants, the thread setting and the CPU's
    features: only rnnc/_engine/plan.py may (threads.py defines cached_num_threads)."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.relative_to(ROOT).as_posix() in ("_engine/plan.py", "_engine/threads.py"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if THRESHOLDS.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def entry_points():
    """(module, function, number of arguments) of every def in the compiled kernels."""
    for path in sorted((ROOT / "_kernels").glob("*.pyx")):
        text = path.read_text()
        for match in re.finditer(r"^def (\w+)\(", text, re.M):
            depth, i = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            args, depth, current = [], 0, ""
            for ch in text[match.end():i - 1]:
                depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
                if ch == "," and depth == 0:
                    args.append(current)
                    current = ""
                else:
                    current += ch
            args += [current] if current.strip() else []
            yield path.name, match.group(1), len(args)


def test_kernel_entry_points_take_descriptions_not_dozens_of_arrays():
    found = list(entry_points())
    assert len(found) > 10
    too_many = [f"{m}:{f} takes {n}" for m, f, n in found if n > 12]
    assert not too_many, "; ".join(too_many)
