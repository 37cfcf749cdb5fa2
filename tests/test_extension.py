"""Extending vision_jax from code outside it: registries, `config.imports`, and the example
paper package (`experiments/example_paper`) trained, resumed, shown and loaded from another
directory through the command line, without touching `vision_jax`."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vision_jax import config as config_lib
from vision_jax import errors, models, tasks
from vision_jax.train import loop

from user_backbone import UserBackbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _OtherBackbone(UserBackbone):
  pass


@pytest.fixture(autouse=True)
def _registries_restored(monkeypatch):
  """What a test registers is gone after it (other tests list the zoo)."""
  monkeypatch.setattr(models.MODELS, "_entries", dict(models.MODELS._entries))
  monkeypatch.setattr(tasks.TASKS, "_entries", dict(tasks.TASKS._entries))


def test_registered_model_is_built_by_name_and_checked_like_a_built_in():
  # A decorator that returns the class.
  assert models.register("test_tiny")(UserBackbone) is UserBackbone
  model = models.get_model("test_tiny", num_classes=3, width=2)
  assert isinstance(model, UserBackbone) and model.width == 2
  assert models.model_fields("test_tiny") == ("num_stages", "width")
  with pytest.raises(errors.UserError, match="has no field depth; its fields: num_stages, width"):
    models.get_model("test_tiny", num_classes=3, depth=2)
  models.register("test_tiny", UserBackbone)  # The same class again (imported twice): fine.
  with pytest.raises(ValueError,
                     match="'test_tiny' is taken by .*UserBackbone; register .*_OtherBackbone"):
    models.register("test_tiny", _OtherBackbone)
  with pytest.raises(ValueError, match="without spaces"):
    models.register("two words", _OtherBackbone)


@pytest.mark.parametrize("lookup, message", [
    (lambda: models.get_model("no_such_net", num_classes=2),
     r"Unknown model 'no_such_net'; valid choices: \[.*'resnet50'.*\]\. A model of your own: "
     r"decorate it with `@vision_jax.models.register\(NAME\)` in a module that config.imports"),
    (lambda: tasks.get_task(_config(task="no_such_task")),
     r"config.task='no_such_task' is not a registered task; valid choices: \[.*'detection'.*"
     r"`@vision_jax.tasks.register\(NAME\)`"),
    (lambda: config_lib.validate(_config(**{"model.name": "no_such_net"}), num_devices=8),
     r"config.model.name='no_such_net' is not a registered model.*vision_jax.models.register"),
])
def test_unknown_names_say_how_to_register(lookup, message):
  with pytest.raises(errors.UserError, match=message):
    lookup()


def _config(**fields):
  c = config_lib.base_config()
  for field, value in fields.items():
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
  return c


def test_imports_are_imported_before_names_are_looked_up(tmp_path, monkeypatch):
  package = tmp_path / "my_paper_for_imports"
  package.mkdir()
  (package / "__init__.py").write_text(
      "import flax.linen as nn\nfrom vision_jax import models\n"
      "@models.register('imported_net')\nclass Net(nn.Module):\n  num_classes: int = 1\n"
      "  dtype: object = None\n  param_dtype: object = None\n")
  (package / "broken.py").write_text("import a_dependency_that_is_missing\n")
  c = _config(**{"model.name": "imported_net"})
  with pytest.raises(errors.UserError, match="not a registered model"):
    config_lib.validate(c, num_devices=8)
  c.imports = ("my_paper_for_imports",)
  with pytest.raises(errors.UserError, match=r"config.imports names 'my_paper_for_imports', "
                     r"which cannot be imported .* PYTHONPATH"):
    config_lib.validate(c, num_devices=8)
  monkeypatch.syspath_prepend(str(tmp_path))
  config_lib.validate(c, num_devices=8)  # Imported: the name is registered now.
  assert "imported_net" in models.MODELS
  # A module that is there but fails itself shows its own error, not "cannot be imported".
  with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_missing"):
    config_lib.import_modules(("my_paper_for_imports.broken",))
  with pytest.raises(errors.UserError, match=r"must be a tuple of module names, e.g. \('x',\)"):
    config_lib.import_modules("x")


def test_train_and_evaluate_takes_a_task_object(tiny_shapes_dir, tmp_path):
  """A Task subclass that is registered nowhere trains from Python."""
  import dataclasses

  @dataclasses.dataclass(frozen=True)
  class HalfLoss(tasks.ClassificationTask):
    def loss(self, outputs, batch):
      total, metrics = super().loss(outputs, batch)
      return total / 2, metrics

  c = config_lib.base_config()
  c.dataset.name, c.dataset.data_dir = "synthetic_shapes/tiny32", tiny_shapes_dir
  c.dataset.prepare = False
  c.input.batch_size, c.input.eval_batch_size = 16, 32
  c.train.num_steps, c.train.progress_bar = 2, False
  c.model.kwargs.features, c.model.kwargs.hidden = (4,), 8
  result = loop.train_and_evaluate(c, str(tmp_path), task=HalfLoss())
  assert result["step"] == 2 and 0 <= result["accuracy"] <= 1


def _run(args, cwd, check=True):
  """Runs a command line in `cwd` with only the repository's installed package (not its
  source tree) importable, as a paper's own checkout would."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
  return result


def test_a_paper_package_outside_vision_jax_trains_resumes_and_is_shown(tiny_shapes_dir,
                                                                       tmp_path):
  """experiments/example_paper copied into an unrelated directory: its backbone, its head and
  its task through every entry point, with `config.imports` and no edit of vision_jax."""
  shutil.copytree(os.path.join(REPO, "experiments", "example_paper"), tmp_path / "example_paper")
  workdir = str(tmp_path / "run")
  common = ["--config.dataset.name=synthetic_shapes/tiny32",
            f"--config.dataset.data_dir={tiny_shapes_dir}", "--config.dataset.prepare=False",
            "--config.input.batch_size=16", "--config.input.eval_batch_size=32",
            "--config.train.eval_every=4", "--config.train.progress_bar=False"]
  train = ["-m", "vision_jax.main", "--config=example_paper/config.py", *common,
           f"--workdir={workdir}"]
  first = _run([*train, "--config.train.num_steps=4"], cwd=tmp_path)
  assert "Started from scratch" in first.stdout + first.stderr
  resumed = _run([*train, "--config.train.num_steps=6"], cwd=tmp_path)
  assert "Resumed from step 4" in resumed.stdout + resumed.stderr
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["imports"] == ["example_paper"] and saved["task"] == "shape_and_centre"
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [4, 6] and all(r["centre_error"] >= 0 for r in evals)

  # The same head on a zoo backbone, trained with pmap (BatchNorm over the pmap axis).
  zoo = _run(["-m", "vision_jax.main", "--config=example_paper/config.py:resnet20", *common,
              f"--workdir={tmp_path / 'pmap'}", "--config.parallel.strategy=pmap",
              "--config.train.num_steps=2", "--config.train.eval_every=2"], cwd=tmp_path)
  assert "Started from scratch" in zoo.stdout + zoo.stderr

  layers = _run(["-m", "vision_jax.viz", "layers", f"--workdir={workdir}"], cwd=tmp_path)
  assert "stage2" in layers.stdout
  out = str(tmp_path / "maps.png")
  _run(["-m", "vision_jax.viz", "feature_maps", f"--workdir={workdir}", "--layer=stage1",
        f"--out={out}"], cwd=tmp_path)
  assert os.path.getsize(out) > 0
  summary = _run(["-m", "vision_jax.tools.summary", "paper_net", "--imports=example_paper",
                  "--image_size=32", "--num_classes=6"], cwd=tmp_path)
  assert "paper_net on (32, 32, 3)" in summary.stdout
  predict = _run(["-c", (
      "import json, numpy as np\n"
      "from vision_jax import inference\n"
      f"loaded = inference.load_for_inference({workdir!r})\n"
      "images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)\n"
      "out = loaded.predict(images)\n"
      "print(json.dumps({k: np.asarray(v).tolist() for k, v in out.items()}))\n")],
      cwd=tmp_path)
  out = json.loads(predict.stdout.strip().splitlines()[-1])
  assert np.shape(out["label"]) == (3,) and np.shape(out["centre"]) == (3, 2)
  assert np.all((np.array(out["centre"]) >= 0) & (np.array(out["centre"]) <= 32))
  # Without `imports` the names are unknown, and the error says how to add them.
  bare = _run([*train[:-1], f"--workdir={tmp_path / 'bare'}",
               "--config.imports=()"], cwd=tmp_path, check=False)
  assert bare.returncode == 2
  assert "not a registered task" in bare.stderr and "vision_jax.tasks.register" in bare.stderr
