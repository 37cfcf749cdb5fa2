"""Every experiment config loads, validates and builds its model."""

import dataclasses
import glob
import os
import types

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax import tasks
from vision_jax.tasks.captioning.vocabulary import Vocabulary

import shipped

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


_load = shipped.load_module  # Takes absolute paths too.


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_validates_and_builds(path):
  module = _load(path)
  assert "python -m vision_jax.main --config=configs/" in module.__doc__  # The launch command.
  config = module.get_config()
  config_lib.validate(config, num_devices=8)
  # Same fields as the schema (experiment files only add model kwargs).
  base = config_lib.base_config()
  for section in base:
    if isinstance(base[section], type(base)):
      assert set(config[section]) == set(base[section]), section
  size = config.input.image_size or 32
  task = tasks.get_task(config)
  if config.task == "captioning":  # The vocabulary comes from the data when a run starts.
    task = dataclasses.replace(task, vocab=Vocabulary.build(["a red circle"]))
  model = task.build_model(config, _stand_in_builder(size))
  inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in task.init_inputs((size, size, 3))]
  inputs[0] = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  if len(inputs) > 1:
    inputs[1] = jax.ShapeDtypeStruct((2, *inputs[1].shape[1:]), inputs[1].dtype)
  outputs, _ = jax.eval_shape(
      lambda *x: model.apply(model.init(jax.random.key(0), *x), *x), *inputs)
  outputs = jax.tree.leaves(outputs)[0]  # Detection: a dict of arrays, `boxes` first.
  assert outputs.shape[0] == 2 and outputs.dtype == jnp.float32


def _stand_in_builder(size):
  """What `Task.build_model` reads of a dataset builder: its features."""
  features = {"image": tfds.features.Image(shape=(size, size, 3)),
              "label": tfds.features.ClassLabel(num_classes=10)}
  return types.SimpleNamespace(info=types.SimpleNamespace(features=features))


def test_configs_exist():
  assert len(CONFIGS) >= 3


@pytest.mark.parametrize("name,arg", [
    ("imagenet", "alexnet"), ("imagenet", "vgg16_bn"), ("imagenet", "googlenet"),
    ("places365", "resnet18"), ("cifar", "cifar100,resnet56")])
def test_config_arguments_pick_models_and_datasets(name, arg):
  config = _load(os.path.join(os.path.dirname(CONFIGS[0]), f"{name}.py")).get_config(arg)
  config_lib.validate(config, num_devices=8)
  assert config.model.name == arg.split(",")[-1]


def test_imagenet_recipe_scales_the_learning_rate_with_the_batch():
  config = _load(os.path.join(os.path.dirname(CONFIGS[0]), "imagenet.py")).get_config("resnet50")
  assert config.input.train_crop == "random_resized" and config.input.image_size == 224
  assert config.optim.learning_rate == pytest.approx(0.1 * config.input.batch_size / 256)
  assert config.dataset.eval_split == "validation"


@pytest.mark.parametrize("name,arg,match", [
    ("imagenet", "mlp", "No ImageNet recipe"), ("cifar", "svhn", "valid choices")])
def test_config_arguments_reject_unknown_values(name, arg, match):
  module = _load(os.path.join(os.path.dirname(CONFIGS[0]), f"{name}.py"))
  with pytest.raises(ValueError, match=match):
    module.get_config(arg)
