"""The dependency rule, checked over every import in the package (including those inside functions).

    core (errors, registry, sharding, figures), data, ops, models  ←  tasks  ←  train, config, recipes
      ←  main, inference, distributed  ←  viz, course, tools  (and projects/, experiments/ on top)

A module may import its own layer and the layers below it, never one above: so a task never reaches
into the training loop, the loop never draws pictures of its own, and no library module depends on
a command-line tool. Within the lowest layer, data and ops need no models, and models need no data.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vision_jax")

# Layer of each top-level part of the package (module or subpackage); higher imports lower.
LAYERS = {
    "errors": 0, "registry": 0, "sharding": 0, "figures": 0,
    "data": 1, "ops": 1, "models": 2,
    "tasks": 3,
    "train": 4, "config": 4, "recipes": 4,
    "main": 5, "inference": 5, "distributed": 5,
    "viz": 6, "course": 6, "tools": 6,
}


def _part(module: str) -> str:
  """`vision_jax.tasks.detection.task` → `tasks`."""
  return module.split(".")[1]


def _imports(path: str, module: str) -> set[str]:
  """The vision_jax modules (or `projects`/`experiments`) that the file at `path` imports."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: resolve against this module's package.
        base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
      found.update(f"{base}.{alias.name}" for alias in node.names)
      found.add(base)
  return {name for name in found if name.split(".")[0] in ("vision_jax", "projects", "experiments")
          and name != "vision_jax"}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        relative = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield path, relative.removesuffix(".__init__")


MODULES = dict((module, path) for path, module in _modules())


def test_every_part_of_the_package_has_a_layer():
  parts = {_part(m) for m in MODULES if m != "vision_jax"}
  assert parts == set(LAYERS), f"give a layer to {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "vision_jax"))
def test_imports_only_its_own_layer_and_below(module):
  layer = LAYERS[_part(module)]
  bad = []
  for name in sorted(_imports(MODULES[module], module)):
    if not name.startswith("vision_jax."):
      bad.append(f"{name} (outside the package)")
      continue
    target = _part(name)
    if target not in LAYERS:  # `from vision_jax import X` where X is not a part: a name.
      continue
    if LAYERS[target] > layer:
      bad.append(f"{name} (layer {LAYERS[target]} > {layer})")
    if {_part(module), target} == {"models", "data"} and target != _part(module):
      bad.append(f"{name} (models and data are independent)")
  assert not bad, f"{module} imports upward: {bad}"


def test_tasks_do_not_import_each_other():
  # Shared task machinery lives in tasks/base.py; a task folder uses only itself and base.
  bad = []
  for module, path in MODULES.items():
    parts = module.split(".")
    if len(parts) < 4 or parts[1] != "tasks":
      continue
    for name in _imports(path, module):
      other = name.split(".")
      if len(other) >= 3 and other[1] == "tasks" and other[2] not in (parts[2], "base"):
        bad.append(f"{module} → {name}")
  assert not bad, bad


def test_the_rule_catches_an_upward_import(tmp_path):
  # The checker itself: a task module that imports the training loop is reported.
  path = tmp_path / "task.py"
  path.write_text("def f():\n  from vision_jax.train import loop\n")
  names = _imports(str(path), "vision_jax.tasks.example.task")
  assert "vision_jax.train.loop" in names and LAYERS[_part("vision_jax.train.loop")] > 3
