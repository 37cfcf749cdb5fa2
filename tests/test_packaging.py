"""pyproject.toml and requirements*.txt: every import declared, pins within the declared bounds,
and a training install without TensorFlow, torch or the test tools."""

import ast
import importlib.metadata
import pathlib
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Imported inside the one function that needs it, so the library runs without it (an extra).
OPTIONAL_IMPORTS = {"torch", "wandb"}
NOT_FOR_TRAINING = {"tensorflow", "tensorflow-cpu", "torch", "torchvision", "pytest", "chex",
                    "pycocoevalcap", "pycocotools"}


def _project() -> dict:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
  return {canonicalize_name(Requirement(r).name) for r in requirements}


def _imported_packages() -> set[str]:
  """Top-level modules that vision_jax imports, other than the standard library and itself."""
  modules = set()
  for path in (ROOT / "vision_jax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      if isinstance(node, ast.Import):
        modules |= {alias.name.split(".")[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        modules.add(node.module.split(".")[0])
  return modules - set(sys.stdlib_module_names) - {"vision_jax"}


def _pins(filename: str) -> dict[str, str]:
  """A requirements file's exact pins, name → version, following `-r` includes."""
  pins = {}
  for line in (ROOT / filename).read_text().splitlines():
    line = line.split("#")[0].strip()
    if line.startswith("-r "):
      pins.update(_pins(line[3:].strip()))
    elif line:
      requirement = Requirement(line)
      (spec,) = requirement.specifier
      assert spec.operator == "==", f"{filename}: {line!r} is not an exact pin"
      pins[canonicalize_name(requirement.name)] = spec.version
  return pins


def test_pyproject_declares_every_imported_package():
  distributions = importlib.metadata.packages_distributions()
  project = _project()
  required = _names(project["dependencies"])
  extras = set().union(*map(_names, project["optional-dependencies"].values()))
  for module in sorted(_imported_packages()):
    names = {canonicalize_name(d) for d in distributions.get(module, [module])}
    declared = extras if module in OPTIONAL_IMPORTS else required
    assert names & declared, (
        f"vision_jax imports {module!r} (distribution {sorted(names)}), which pyproject.toml "
        "does not declare" + (" in an extra" if module in OPTIONAL_IMPORTS else ""))


def test_pins_meet_the_declared_bounds_and_training_needs_no_tensorflow_or_torch():
  project = _project()
  train, test = _pins("requirements.txt"), _pins("requirements-test.txt")
  assert not NOT_FOR_TRAINING & set(train), "requirements.txt is the lean training install"
  assert set(train) <= set(test), "requirements-test.txt includes requirements.txt"
  checks = [(r, train) for r in project["dependencies"]] + [
      (r, test) for extra in ("prepare", "test")
      for r in project["optional-dependencies"][extra]]
  for line, pins in checks:
    requirement = Requirement(line)
    name = canonicalize_name(requirement.name)
    if name == "vision-jax":  # An extra naming another one.
      continue
    assert name in pins, f"pyproject.toml needs {line!r}; no requirements file pins it"
    assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {line!r}"
  assert set(_pins("requirements-prepare.txt")) - set(train) == {"tensorflow-cpu"}


def test_license():
  assert _project()["license"] == "Apache-2.0"
  text = (ROOT / "LICENSE").read_text()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
