"""A workdir is a contract: a rerun with a config that changes what it trains is refused before
anything in it is touched; safe changes are accepted, stated and recorded."""

import json
import os

import pytest

from vision_jax import config as config_lib
from vision_jax import errors
from vision_jax.train import loop


def _config(data_dir, **changes):
  c = config_lib.base_config()
  c.dataset.name = "synthetic_shapes/tiny32"
  c.dataset.data_dir, c.dataset.prepare = data_dir, False
  c.input.batch_size = c.input.eval_batch_size = 16
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 2, 2, 2
  c.train.progress_bar = False
  c.model.kwargs = {"features": (4, 8), "hidden": 16}
  for field, value in changes.items():
    section, name = field.split("__")
    c[section][name] = value
  return c


def _snapshot(workdir):
  """Everything a refused rerun must leave as it was."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      files[os.path.relpath(path, workdir)] = open(path, "rb").read()
  return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_shapes_dir):
  workdir = str(tmp_path_factory.mktemp("trained"))
  loop.train_and_evaluate(_config(tiny_shapes_dir), workdir)
  return workdir


STRUCTURAL = {
    "hidden width": ({"model__kwargs": {"features": (4, 8), "hidden": 32}},
                     "model.kwargs.hidden: 16 → 32"),
    "model": ({"model__name": "mlp", "model__kwargs": {}}, 'model.name: "simple_cnn" → "mlp"'),
    "image size": ({"input__image_size": 24}, "input.image_size: null → 24"),
    "optimizer": ({"optim__name": "sgd"}, 'optim.name: "adamw" → "sgd"'),
    "EMA on": ({"train__ema_decay": 0.9}, "train.ema_decay: 0.0 → 0.9"),
    "dataset": ({"dataset__name": "mnist"}, 'dataset.name: "synthetic_shapes/tiny32" → "mnist"'),
}


@pytest.mark.parametrize("change", sorted(STRUCTURAL))
def test_a_structural_change_is_refused_and_nothing_is_touched(trained, tiny_shapes_dir, change):
  fields, listed = STRUCTURAL[change]
  before = _snapshot(trained)
  with pytest.raises(errors.UserError) as refused:
    loop.train_and_evaluate(_config(tiny_shapes_dir, train__num_steps=4, **fields), trained)
  message = str(refused.value)
  assert listed in message and "train.num_steps: 2 → 4" in message
  assert "nothing in it was changed" in message and "--config.model.init_from=" in message
  assert _snapshot(trained) == before


def test_safe_changes_are_accepted_stated_and_recorded(tmp_path, tiny_shapes_dir, capsys):
  workdir = str(tmp_path)
  loop.train_and_evaluate(_config(tiny_shapes_dir), workdir)
  result = loop.train_and_evaluate(
      _config(tiny_shapes_dir, optim__learning_rate=5e-4, train__num_steps=4), workdir)
  assert result["step"] == 4
  out = capsys.readouterr().out
  assert "Resumed from step 2" in out and "optim.learning_rate: 0.001 → 0.0005" in out
  [record] = [json.loads(line) for line in open(os.path.join(workdir, "config_changes.jsonl"))]
  assert record["resumed_step"] == 2 and record["changes"] == {
      "optim.learning_rate": {"old": 1e-3, "new": 5e-4}, "train.num_steps": {"old": 2, "new": 4}}
  assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["learning_rate"] == 5e-4


def test_init_from_a_training_workdir_starts_a_new_run_from_its_weights(
    trained, tmp_path, tiny_shapes_dir, capsys):
  c = _config(tiny_shapes_dir, model__kwargs={"features": (4, 8), "hidden": 16},
              optim__name="sgd", optim__learning_rate=1e-9)
  c.model.init_from = trained
  loop.train_and_evaluate(c, str(tmp_path))
  assert "Started from " + trained in capsys.readouterr().out


def test_init_from_weights_of_another_architecture_is_refused(trained, tmp_path,
                                                              tiny_shapes_dir):
  c = _config(tiny_shapes_dir, model__name="mlp", model__kwargs={})
  c.model.init_from = trained
  with pytest.raises(errors.UserError, match="Not one weight kernel of the model matches"):
    loop.train_and_evaluate(c, str(tmp_path))


@pytest.mark.parametrize("path", ["missing", "empty"])
def test_init_from_neither_weights_nor_a_workdir_is_refused(tmp_path, tiny_shapes_dir, path):
  os.makedirs(tmp_path / "empty")
  c = _config(tiny_shapes_dir)
  c.model.init_from = str(tmp_path / path)
  with pytest.raises(errors.UserError, match="neither a training workdir"):
    loop.train_and_evaluate(c, str(tmp_path / "run"))


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path, tiny_shapes_dir):
  from vision_jax.train import workdir as workdir_lib
  with workdir_lib.exclusive(str(tmp_path)):  # As a run in another process would hold it.
    with pytest.raises(errors.UserError, match=f"Another run is using .* .pid {os.getpid()} "):
      loop.train_and_evaluate(_config(tiny_shapes_dir), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")
  loop.train_and_evaluate(_config(tiny_shapes_dir), str(tmp_path))  # Free again.
