"""The packages show the layers (issue 10): core is pure JAX, imports point downward.

Read from the source (ast), so the test needs no imports of its own: every
`import diffusion...` / `from diffusion... import` of every module, resolved
to modules of the package.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "diffusion"
# Each layer may import itself and the layers before it (docs/architecture.md).
ORDER = ["_xla_flags", "core", "models", "train", "dist", "data", "run", "viz", "latent", "experiment",
         "eval", "modes", "main", "classify", "figures", "port", "study", "sweep", "compare"]
LAYER = {name: i for i, name in enumerate(ORDER)}


def _modules():
  out = {}
  for path in sorted(PKG.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def _imports(path, modules):
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      subs = [f"{node.module}.{a.name}" for a in node.names]
      # `from pkg import submodule` depends on the submodule, not on pkg's __init__.
      names = [n for n in subs if n in modules] or [node.module]
    for n in names:
      if n.split(".")[0] in ("flax",):
        found.add("flax")
      while n and n not in modules:
        n = n.rpartition(".")[0]
      if n.startswith("diffusion."):
        found.add(n)
  return found


def _layer(module):
  return LAYER[module.split(".")[1]]


def test_core_imports_no_flax_and_nothing_outside_core():
  modules = _modules()
  for name, path in modules.items():
    if name.startswith("diffusion.core"):
      bad = {m for m in _imports(path, modules) if m == "flax" or not m.startswith("diffusion.core")}
      assert not bad, f"{name} imports {sorted(bad)}"


def test_imports_point_downward_and_form_a_dag():
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    if name == "diffusion":
      continue
    deps = {m for m in _imports(path, modules) if m not in ("flax", "diffusion")}
    for dep in deps:
      assert _layer(dep) <= _layer(name), f"{name} (layer {name.split('.')[1]}) imports {dep}"
    graph[name] = deps - {name}
  # No cycle among modules (depth-first search).
  state = {}

  def visit(n, stack):
    state[n] = "open"
    for d in graph.get(n, ()):
      assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [n, d])}"
      if d not in state:
        visit(d, stack + [n])
    state[n] = "done"

  for n in graph:
    if n not in state:
      visit(n, [])
  assert len(graph) > 40  # Every module was read.
