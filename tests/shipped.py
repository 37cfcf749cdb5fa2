"""Loads the repository's shipped files (configs, experiment scripts) as modules, for tests."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(relative_path: str):
  """The Python file at `relative_path` from the repository root, imported as a module."""
  path = os.path.join(REPO, relative_path)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name: str, *args):
  """`configs/<name>.py`'s `get_config(*args)`."""
  return load_module(os.path.join("configs", f"{name}.py")).get_config(*args)
