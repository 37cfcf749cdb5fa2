"""Training loop, steps and config checks, on 8 fake CPU devices and TFDS mock data."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax import models, sharding, tasks
from vision_jax.train import checkpoint, loop, steps
from vision_jax.train.state import create_train_state

import shipped

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(dataset: str = "cifar10", num_steps: int = 2):
  c = config_lib.base_config()
  c.dataset.name = dataset
  c.input.batch_size = 16
  c.input.eval_batch_size = 16
  c.train.num_steps = num_steps
  c.train.log_every = 1
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.progress_bar = False
  return c


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_one_step_end_to_end_on_mock_data(tmp_path, dataset):
  with tfds.testing.mock_data(num_examples=24):
    result = loop.train_and_evaluate(tiny_config(dataset, num_steps=1), str(tmp_path))
  assert result["step"] == 1 and result["num_examples"] == 24  # 24 = one full + one padded batch
  assert 0.0 <= result["accuracy"] <= result["top5_accuracy"] <= 1.0
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert {r["split"] for r in records} == {"train", "eval"}
  assert json.load(open(tmp_path / "config.json"))["dataset"]["name"] == dataset
  assert (tmp_path / "curves.png").stat().st_size > 0
  assert os.listdir(tmp_path / "tensorboard")
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=2,
                                 best_metric="accuracy").latest_step() == 1


def test_imagenet_config_trains_on_variable_size_mock_images(tmp_path):
  """configs/imagenet.py as shipped, only smaller: random-resized crops of JPEGs of any size."""
  c = shipped.load_config("imagenet", "resnet18")
  c.input.image_size = 48
  c.input.batch_size = c.input.eval_batch_size = 16
  c.input.num_workers = 0
  c.train.num_steps = 1
  c.train.progress_bar = False
  with tfds.testing.mock_data(num_examples=20):
    result = loop.train_and_evaluate(c, str(tmp_path))
  assert result["step"] == 1 and result["num_examples"] == 20
  assert 0.0 <= result["top5_accuracy"] <= 1.0
  assert result["top5_error"] == pytest.approx(1 - result["top5_accuracy"])


def _state(mesh, model_name="resnet20"):
  model = models.get_model(model_name, num_classes=10)
  tx = optax.sgd(0.1, momentum=0.9)
  return create_train_state(model, tx, jax.random.key(0), (32, 32, 3), mesh, use_ema=True)


def _batch(seed=0, batch_size=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 10, size=batch_size)}


def test_train_and_eval_steps_compile_only_once():
  mesh = sharding.make_mesh()
  state = _state(mesh, "simple_cnn")
  compiled = steps.compile_steps(mesh, state, tasks.ClassificationTask(0.1, 0.3),
                                 ema_decay=0.99)
  compiles = []
  def on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)
  for seed in range(4):
    if seed == 1:  # Everything after the first step must reuse the compiled programs.
      jax.monitoring.register_event_duration_secs_listener(on_event)
    batch = _batch(seed)
    state, metrics = compiled.train(state, batch)
    batch["weight"] = np.ones(16, np.float32)
    compiled.evaluate(state, batch)
  jax.monitoring.unregister_event_duration_listener(on_event)
  assert compiles == []
  assert int(state.step) == 4 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("field, value, expected", [
    ("model.name", "resnet5", "resnet50"),
    ("task", "depth_estimation", "classification"),
    ("optim.name", "adam", "adamw"),
    ("parallel.strategy", "tpu", "pmap"),
    ("train.best_metric", "miou", "top5_accuracy"),
    ("parallel.fsdp", 3, "divisor of the device count (8)"),
    ("train.grad_accum_steps", 4, "grad_accum_steps (4)"),
    ("input.batch_size", 12, "device count (8)"),
])
def test_bad_config_values_name_the_valid_choices(field, value, expected):
  c = tiny_config()
  *section, key = field.split(".")
  (c[section[0]] if section else c)[key] = value
  with pytest.raises(ValueError, match=r".*") as error:
    config_lib.validate(c, num_devices=8)
  assert str(value) in str(error.value) and expected in str(error.value)


def test_unknown_dataset_names_the_valid_choices(tmp_path):
  c = tiny_config("imagenet2013")
  with pytest.raises(ValueError) as error:
    loop.train_and_evaluate(c, str(tmp_path))
  assert "imagenet2013" in str(error.value) and "synthetic_shapes" in str(error.value)


def test_misspelt_config_key_fails_on_the_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "vision_jax.main", "--config=configs/shapes_cnn.py",
       "--config.optim.learning_rat=0.1", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "learning_rat" in result.stderr
  assert not os.listdir(tmp_path)  # Nothing was started.


def test_a_diverging_run_never_saves_a_bad_state_and_keeps_the_last_good_one(tmp_path):
  """SGD at lr 1e30 (the issue's case): the update after step 4 leaves finite but huge weights,
  checkpointed at step 5, whose loss (step 6's) is NaN. Checkpoint 5 is set aside; 4 stays,
  although keep_checkpoints=1, and a rerun resumes from it and stops the same way."""
  c = tiny_config(num_steps=4)
  c.optim.name, c.optim.schedule, c.optim.warmup_steps = "sgd", "constant", 0
  c.train.checkpoint_every, c.train.keep_checkpoints = 1, 1
  with tfds.testing.mock_data(num_examples=32):
    loop.train_and_evaluate(c, str(tmp_path))
    c.train.num_steps = 8
    c.optim.learning_rate = 1e30
    for _ in range(2):
      with pytest.raises(FloatingPointError, match="at step 6 .* last good checkpoint is step 4"):
        loop.train_and_evaluate(c, str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=1, best_metric="accuracy")
  assert ckpt.all_steps() == [4]
  assert sorted(d.split(".")[0] for d in os.listdir(tmp_path / "checkpoints_set_aside")) == [
      "5", "5"]
  ckpt.close()


class _WithAuxHead(nn.Module):
  """A tiny model with an auxiliary classifier, like GoogLeNet's, in `features["aux1"]`."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    aux = nn.Dense(self.num_classes, name="aux1")(x)
    return nn.Dense(self.num_classes, name="head")(x), {"aux1": aux} if train else {}


def test_auxiliary_classifiers_are_trained_through_their_loss():
  """An aux head only learns through the aux loss: with weight 0 it stays where it started."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  moved = {}
  for weight in (0.0, 0.3):
    state = create_train_state(_WithAuxHead(), optax.sgd(0.1), jax.random.key(0), (32, 32, 3),
                               mesh, use_ema=False)
    before = jax.device_get(state.params["aux1"]["kernel"])
    compiled = steps.compile_steps(mesh, state, tasks.ClassificationTask(0.0, weight))
    state, metrics = compiled.train(state, _batch())
    moved[weight] = bool(np.any(jax.device_get(state.params["aux1"]["kernel"]) != before))
    assert np.isfinite(float(metrics["loss"]))
  assert moved == {0.0: False, 0.3: True}


def test_pretrained_weights_replace_matching_layers_and_keep_the_new_head(tmp_path):
  from vision_jax.train import weights
  source = models.get_model("resnet20", num_classes=100)  # Pretrained on 100 classes.
  variables = jax.device_get(source.init(jax.random.key(1), np.zeros((1, 32, 32, 3)),
                                         train=False))
  variables["batch_stats"] = jax.tree.map(lambda x: x + 0.5, variables["batch_stats"])
  weights.save_converted(variables, str(tmp_path / "pretrained"))
  loaded = weights.load_converted(str(tmp_path / "pretrained"))

  mesh = sharding.make_mesh()
  state = _state(mesh)  # 10 classes, EMA on.
  state, kept = weights.load_pretrained(state, loaded)
  assert sorted(kept) == ["params/head/bias", "params/head/kernel"]
  np.testing.assert_array_equal(state.params["stem"]["conv"]["kernel"],
                                variables["params"]["stem"]["conv"]["kernel"])
  np.testing.assert_array_equal(state.ema_params["stem"]["conv"]["kernel"],
                                variables["params"]["stem"]["conv"]["kernel"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.batch_stats),
               variables["batch_stats"])
  assert state.params["head"]["kernel"].shape == (64, 10)
  leaf = state.params["stem"]["conv"]["kernel"]
  assert leaf.sharding.is_fully_replicated and len(leaf.addressable_shards) == 8


def test_training_starts_from_init_from(tmp_path):
  from vision_jax.train import weights
  model = models.get_model("simple_cnn", num_classes=10)
  variables = jax.device_get(model.init(jax.random.key(3), np.zeros((1, 32, 32, 3)),
                                        train=False))
  weights.save_converted(variables, str(tmp_path / "pretrained"))
  c = tiny_config(num_steps=1)
  c.model.init_from = str(tmp_path / "pretrained")
  c.optim.learning_rate = 0.0  # The saved weights must come out unchanged.
  with tfds.testing.mock_data(num_examples=16):
    loop.train_and_evaluate(c, str(tmp_path / "run"))
  import orbax.checkpoint as ocp
  saved = ocp.StandardCheckpointer().restore(str(tmp_path / "run" / "checkpoints" / "1" /
                                                 "state"))
  jax.tree.map(np.testing.assert_array_equal, saved["params"], variables["params"])
