"""The package's import graph: no cycle, and imports only go down the layer stack.

DESIGN.md section 6: protocol <- models <- memory <- data <- agent <- training, eval. Every
import of every module counts, at any depth (function-local and `TYPE_CHECKING` imports
included, since a lazy import is still a dependency), and literal `importlib.import_module`
targets too. eval may import training (the eval CLI loads orbax checkpoints that
`training/checkpoint.py` writes, issue 12); training never imports eval.

Run it alone: `python -m pytest -q tests/test_layering.py` (a second, no JAX import).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "atommem_jax"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# Rank of each layer: a module may import modules of its own rank or lower. The package
# root (`__version__`) and `protocol` are leaves every layer may use.
LAYERS: dict[str, int] = {
    "": 0, "protocol": 0, "models": 1, "memory": 2, "data": 3, "agent": 4, "training": 5,
    "eval": 6,
}

Graph = dict[str, set[str]]


def module_name(path: pathlib.Path, package_dir: pathlib.Path = PACKAGE_DIR) -> str:
  """Dotted module name of a file under the package (`pkg/a/__init__.py` -> `pkg.a`)."""
  parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
  """Absolute name of a relative import (`from ..x import y` seen in `module`)."""
  base = module.split(".") if is_package else module.split(".")[:-1]
  if level - 1 > len(base) - 1:
    raise ValueError(f"{module}: relative import beyond the top-level package (level {level})")
  base = base[: len(base) - (level - 1)]
  return ".".join(base + ([target] if target else []))


def _dynamic_prefix(node: ast.expr, module: str) -> str | None:
  """The module a dynamic `import_module(...)` argument names, as far as it is literal:
  a string constant, or an f-string's literal head (`{__name__}` resolved) cut at its
  last dot. None when nothing literal is known."""
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    return node.value
  if not isinstance(node, ast.JoinedStr):
    return None
  head = ""
  for part in node.values:
    if isinstance(part, ast.Constant):
      head += part.value
    elif (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name)
          and part.value.id == "__name__"):
      head += module
    else:
      break
  return head.rsplit(".", 1)[0] if "." in head else None


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
  """Package modules that `module` imports anywhere in `source` (self-edges dropped).

  `from a.b import c` names `a.b.c` when that is a module, else `a.b`. A dynamic
  `importlib.import_module` / `__import__` call whose target is not literal enough to
  place is an error: the checker never silently skips a dependency.
  """
  found: set[str] = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = (_resolve_relative(module, is_package, node.level, node.module) if node.level
              else node.module or "")
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.add(sub if sub in known else base)
    elif isinstance(node, ast.Call):
      fn = node.func
      name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
      if name in ("import_module", "__import__") and node.args:
        target = _dynamic_prefix(node.args[0], module)
        if target is None:
          raise ValueError(f"{module} line {node.lineno}: dynamic import whose target cannot "
                           "be read from the source; make it literal so layering is checkable")
        found.add(target)
  inside = set()
  for name in found:
    # Keep the longest known module that the name starts with (`pkg.a.b.attr` -> `pkg.a.b`).
    while name and name not in known:
      name = name.rpartition(".")[0]
    if name and name != module and (name == PACKAGE or name.startswith(PACKAGE + ".")):
      inside.add(name)
  return inside


def package_graph(package_dir: pathlib.Path = PACKAGE_DIR) -> Graph:
  """module -> the package modules it imports, over every .py file of the package."""
  files = sorted(package_dir.rglob("*.py"))
  names = {module_name(f, package_dir): f for f in files}
  known = set(names)
  return {m: imports_of(f.read_text(encoding="utf-8"), m, f.name == "__init__.py", known)
          for m, f in names.items()}


def find_cycle(graph: Graph) -> list[str] | None:
  """One import cycle as a closed path [a, b, ..., a], or None (iterative DFS, 3 colours)."""
  colour = {m: 0 for m in graph}  # 0 unvisited, 1 on the stack, 2 done
  for root in sorted(graph):
    if colour[root]:
      continue
    stack = [(root, iter(sorted(graph[root])))]
    path = [root]
    colour[root] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        colour[node] = 2
        stack.pop()
        path.pop()
      elif colour.get(child, 2) == 1:
        return path[path.index(child):] + [child]
      elif colour.get(child, 2) == 0:
        colour[child] = 1
        path.append(child)
        stack.append((child, iter(sorted(graph.get(child, ())))))
  return None


def layer_of(module: str) -> str:
  """The layer a module belongs to: its first component under the package ('' = root)."""
  parts = module.split(".")
  if parts[0] != PACKAGE:
    raise ValueError(f"{module!r} is not in package {PACKAGE!r}")
  layer = parts[1] if len(parts) > 1 else ""
  if layer not in LAYERS:
    raise ValueError(f"module {module!r} is in no known layer ({layer!r}); add it to LAYERS "
                     "in tests/test_layering.py and to DESIGN.md section 6")
  return layer


def layer_violations(graph: Graph, layers: dict[str, int] = LAYERS) -> list[str]:
  """Every edge from a lower layer to a higher one, as 'a (layer) -> b (layer)'."""
  out = []
  for src in sorted(graph):
    a = layer_of(src)
    for dst in sorted(graph[src]):
      b = layer_of(dst)
      if layers[b] > layers[a]:
        out.append(f"{src} ({a or 'root'}) -> {dst} ({b or 'root'})")
  return out


# ------------------------------------------------------------------------------ the package


@pytest.fixture(scope="module")
def graph() -> Graph:
  return package_graph()


def test_walker_sees_the_package(graph):
  """Guards the checks below against passing on an empty or blind walk."""
  assert len(graph) >= 30, sorted(graph)
  assert "atommem_jax.memory.state" in graph["atommem_jax.agent.rollout"]
  assert "atommem_jax.protocol" in graph["atommem_jax.agent.rollout"]
  # A function-local import (the sampler loads only when a model is called).
  assert "atommem_jax.models.sampler" in graph["atommem_jax.agent.policies"]
  # A lazy `importlib.import_module(f"atommem_jax.models.{...}")`: the package itself, dropped.
  assert graph["atommem_jax.models"] == {"atommem_jax.models.config"}


def test_every_module_has_a_layer(graph):
  for module in graph:
    layer_of(module)  # raises, naming the module, when it is in no layer


def test_import_graph_has_no_cycle(graph):
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_only_go_down_the_layers(graph):
  bad = layer_violations(graph)
  assert not bad, ("lower layer imports a higher one (order: protocol < models < memory < data "
                   "< agent < training < eval):\n  " + "\n  ".join(bad))


# ------------------------------------------------------------------------ the checker itself


def _known(*names: str) -> set[str]:
  return {PACKAGE, *(f"{PACKAGE}.{n}" for n in names)}


def test_imports_of_finds_every_form():
  src = """
import os
import atommem_jax.models.config
from atommem_jax.memory import state as S
from atommem_jax.data.metrics import extract_answer
from . import trajectory
from ..protocol import parse
import importlib
def later():
  from atommem_jax.eval import runner
  importlib.import_module("atommem_jax.training.sharding")
if TYPE_CHECKING:
  from atommem_jax.models.sampler import generate
"""
  known = _known("models", "models.config", "models.sampler", "memory", "memory.state", "data",
                 "data.metrics", "agent", "agent.trajectory", "agent.rollout", "protocol",
                 "eval", "eval.runner", "training", "training.sharding")
  got = imports_of(src, "atommem_jax.agent.rollout", False, known)
  want = {"models.config", "memory.state", "data.metrics", "agent.trajectory", "protocol",
          "eval.runner", "training.sharding", "models.sampler"}
  assert got == {f"{PACKAGE}.{w}" for w in want}


def test_imports_of_relative_in_a_package_and_dynamic_prefixes():
  known = _known("memory", "memory.state", "memory.embedder")
  src = ("from .state import apply\n"
         "import importlib\n"
         "importlib.import_module(f'{__name__}.{x}')\n"
         "importlib.import_module(f'atommem_jax.memory.{x}')\n")
  assert imports_of(src, "atommem_jax.memory", True, known) == {"atommem_jax.memory.state"}
  with pytest.raises(ValueError, match="line 1: dynamic import"):
    imports_of("importlib.import_module(name)\n", "atommem_jax.memory", True, known)
  with pytest.raises(ValueError, match="beyond the top-level package"):
    imports_of("from .... import x\n", "atommem_jax.memory.state", False, known)


def test_find_cycle_on_fake_graphs():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"b", "c"}}) is None
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"a"}}) == ["a", "a"]
  # The cycle need not pass through the first node visited.
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_layer_violations_on_fake_graphs():
  p = PACKAGE
  fake = {f"{p}.data.synthetic": {f"{p}.agent.rollout", f"{p}.protocol"},
          f"{p}.eval.runner": {f"{p}.training.checkpoint", f"{p}.agent.rollout"},
          f"{p}.training.grpo": {f"{p}.eval.runner", f"{p}"},
          f"{p}.protocol": {f"{p}.models.config"}}
  assert layer_violations(fake) == [
      f"{p}.data.synthetic (data) -> {p}.agent.rollout (agent)",
      f"{p}.protocol (protocol) -> {p}.models.config (models)",
      f"{p}.training.grpo (training) -> {p}.eval.runner (eval)"]
  with pytest.raises(ValueError, match="in no known layer"):
    layer_violations({f"{p}.serving.api": set()})


def test_package_graph_on_a_fake_package(tmp_path):
  """End to end on files: a cycle through a function-local import is found."""
  pkg = tmp_path / PACKAGE
  (pkg / "memory").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "memory" / "__init__.py").write_text("")
  (pkg / "memory" / "a.py").write_text("from atommem_jax.memory import b\n")
  (pkg / "memory" / "b.py").write_text("def f():\n  from . import a\n")
  g = package_graph(pkg)
  assert g[f"{PACKAGE}.memory.a"] == {f"{PACKAGE}.memory.b"}
  assert find_cycle(g) == [f"{PACKAGE}.memory.a", f"{PACKAGE}.memory.b", f"{PACKAGE}.memory.a"]
