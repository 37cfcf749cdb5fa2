"""Every bad input gets one clear, early error (a `UserError` naming the field, value and fix).

In-process checks of `config.validate` and the Python API first (fast, nothing trained), then a
few runs of the command lines: exit status 2, one `error:` line, no traceback unless asked.
"""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax import errors, inference, models, tasks
from vision_jax.data import datasets
from vision_jax.data.builders import fashion_mnist_local
from vision_jax.models import input_size
from vision_jax.tools import torch_import

import shipped

REPO = shipped.REPO


def _config(**fields):
  """A small valid config with `fields` ("section.name": value) changed."""
  c = config_lib.base_config()
  c.input.batch_size = c.input.eval_batch_size = 8
  for field, value in fields.items():
    *section, name = field.split(".")
    (c[section[0]] if section else c)[name] = value
  return c


@pytest.mark.parametrize("field, value, expected", [
    ("optim.learning_rate", -0.1, ">= 0"),
    ("optim.learning_rate", float("nan"), "finite"),
    ("optim.weight_decay", -1e-4, ">= 0"),
    ("optim.momentum", 1.0, "[0, 1)"),
    ("optim.warmup_steps", -5, ">= 0"),
    ("optim.grad_clip_norm", -1.0, ">= 0"),
    ("train.num_steps", 0, ">= 1"),
    ("train.num_steps", -3, ">= 1"),
    ("train.num_epochs", 0.0, "> 0"),
    ("train.label_smoothing", 2.0, "[0, 1)"),
    ("train.ema_decay", 1.5, "[0, 1)"),
    ("train.log_every", 0, ">= 1"),
    ("train.eval_every", 0, ">= 1"),
    ("train.checkpoint_every", -1, ">= 1"),
    ("train.keep_checkpoints", 0, ">= 1"),
    ("input.image_size", 0, ">= 1"),
    ("input.crop_padding", -1, ">= 0"),
    ("input.num_workers", -2, ">= 0"),
    ("input.prefetch", -1, ">= 0"),
    ("input.std", (0.0,), "> 0"),
    ("input.mean", (0.5, 0.5), "same length"),
])
def test_bad_values_name_the_field_the_value_and_the_range(field, value, expected):
  with pytest.raises(errors.UserError) as error:
    config_lib.validate(_config(**{field: value}), num_devices=8)
  message = str(error.value)
  assert f"config.{field}=" in message and str(value) in message and expected in message
  assert "\n" not in message


def test_kwargs_of_another_model_name_the_model_the_kwargs_and_the_fields():
  c = _config(**{"model.name": "resnet20"})  # simple_cnn's kwargs left behind.
  c.model.kwargs.hidden = 64
  with pytest.raises(errors.UserError, match=r"config.model.kwargs has hidden, which model "
                     r"'resnet20' does not have.*its fields: .*stage_sizes"):
    config_lib.validate(c, num_devices=8)


def test_captioning_kwargs_may_name_captioner_fields():
  c = _config(**{"task": "captioning", "train.best_metric": "bleu4"})
  c.model.kwargs.hidden_dim, c.model.kwargs.features = 32, (8,)
  config_lib.validate(c, num_devices=8)
  c.model.kwargs.widths = (8,)
  with pytest.raises(errors.UserError, match="has widths, which model 'simple_cnn'"):
    config_lib.validate(c, num_devices=8)


def test_images_too_small_for_the_model_name_the_smallest_size():
  with pytest.raises(errors.UserError, match=r"config.input.image_size=3: Model 'simple_cnn' "
                     r"cannot take 3x3 images.*the smallest size it accepts is 4x4"):
    config_lib.validate(_config(**{"input.image_size": 3}), num_devices=8)
  assert input_size.smallest_size("simple_cnn", features=(4, 8, 16)) == 8


def test_mean_and_std_must_fit_the_dataset_channels():
  c = _config(**{"input.mean": (0.5, 0.5, 0.5), "input.std": (0.2, 0.2, 0.2)})
  config_lib.validate(c, num_devices=8)
  config_lib.validate_image_shape(c, (32, 32, 3))
  with pytest.raises(errors.UserError, match=r"config.input.mean=\(0.5, 0.5, 0.5\) has 3 "
                     r"values, but the images of .* have 1 channel"):
    config_lib.validate_image_shape(c, (28, 28, 1))


@pytest.mark.parametrize("num_classes", [0, -1])
def test_get_model_refuses_no_classes(num_classes):
  with pytest.raises(errors.UserError, match=f"num_classes={num_classes} for model 'resnet18'"):
    models.get_model("resnet18", num_classes=num_classes)


def test_get_model_names_unknown_fields():
  with pytest.raises(errors.UserError, match="'resnet18' has no field hidden; its fields: "):
    models.get_model("resnet18", num_classes=10, hidden=3)


def test_misspelt_config_keys_name_the_nearest_valid_ones():
  c = config_lib.base_config()
  assert "did you mean 'num_steps'" in errors.unknown_key_message(c, "train.steps")
  assert "did you mean 'optim'" in errors.unknown_key_message(c, "optimizer.lr")
  assert errors.unknown_key_message(c, "optim.learning_rate") is None


@pytest.fixture(scope="module")
def shapes(tiny_shapes_dir):
  return tfds.builder("synthetic_shapes/tiny32", data_dir=tiny_shapes_dir)


@pytest.mark.parametrize("split, expected", [
    ("validation", "has no split 'validation'"), ("", "has no split ''"),
    ("train[:0]", "Split 'train[:0]' of dataset 'synthetic_shapes/tiny32/1.1.0' is empty")])
def test_unknown_or_empty_splits_list_the_splits_with_sizes(shapes, split, expected):
  with pytest.raises(errors.UserError, match=r"train \(256\), test \(64\)") as error:
    datasets.open_split(shapes, split)
  assert expected in str(error.value)


@pytest.mark.parametrize("task, field, value", [
    ("segmentation", "mask_key", "segmask"), ("captioning", "caption_key", "captions/text"),
    ("detection", "objects_key", "boxes")])
def test_missing_task_features_name_the_config_field_and_the_features(shapes, task, field, value):
  c = _config(task=task)
  c[task][field] = value
  with pytest.raises(errors.UserError, match=rf"has no feature '{value}' \(config.{task}.{field}="
                     r".*its features: \['caption', 'image', 'label', 'mask', 'objects'\]"):
    tasks.get_task(c).check_dataset(shapes)
  tasks.get_task(_config(task=task)).check_dataset(shapes)  # The defaults are there.


def test_segmentation_on_a_dataset_without_masks(tmp_path):
  cifar = tfds.builder("cifar10", data_dir=str(tmp_path))  # Static info only: nothing read.
  with pytest.raises(errors.UserError, match=r"'cifar10/3.0.2' has no feature 'mask' "
                     r"\(config.segmentation.mask_key='mask'\); its features: \['id', 'image'"):
    tasks.get_task(_config(task="segmentation")).check_dataset(cifar)


def test_unprepared_dataset_with_prepare_false_is_a_missing_file(tmp_path):
  c = _config(**{"dataset.data_dir": str(tmp_path), "dataset.prepare": False})
  with pytest.raises(errors.MissingFileError, match="not prepared in .*prepare=False"):
    datasets.builder_from_config(c.dataset)


def test_unknown_dataset_config_lists_the_valid_ones(tmp_path):
  c = _config(**{"dataset.name": "synthetic_shapes/size31", "dataset.data_dir": str(tmp_path)})
  with pytest.raises(errors.UserError, match=r"config.dataset.name='synthetic_shapes/size31': "
                     r"BuilderConfig size31 not found.*valid: synthetic_shapes/size32"):
    datasets.builder_from_config(c.dataset)


def test_truncated_gz_idx_file_names_the_file(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, 2 * 28 * 28, np.uint8).tobytes()
  packed = gzip.compress(struct.pack(">BBBBIII", 0, 0, 0x08, 3, 2, 28, 28) + pixels)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(packed[:len(packed) // 2])
  with pytest.raises(errors.UserError, match=rf"{path} is damaged .*reinstall"):
    fashion_mnist_local.read_idx(path)


def test_torch_import_refuses_whole_models_and_other_files(tmp_path):
  torch = pytest.importorskip("torch")
  layer = torch.nn.Linear(2, 3)
  torch.save(layer, tmp_path / "model.pth")
  torch.save([1, 2], tmp_path / "list.pth")
  (tmp_path / "text.pth").write_text("not torch")
  for name, expected in (("model.pth", "whole model"), ("list.pth", "holds a list"),
                         ("text.pth", "not a torch file")):
    with pytest.raises(errors.UserError, match=expected) as error:
      torch_import.load_torch_file(str(tmp_path / name))
    assert name in str(error.value) and "model.state_dict()" in str(error.value)


def test_inference_images_must_be_a_batch_with_the_model_channels():
  c = _config()
  rgb = np.zeros((2, 32, 32, 3), np.uint8)
  assert inference.preprocess(rgb, c, (32, 32, 3)).shape == (2, 32, 32, 3)
  with pytest.raises(errors.UserError, match=r"\(2, 32, 32, 1\) have 1 channel\(s\), the model "
                     r"takes \(B, 32, 32, 3\)"):
    inference.preprocess(rgb[..., :1], c, (32, 32, 3))
  with pytest.raises(errors.UserError, match=r"\(32, 32, 3\).*add the batch axis"):
    inference.preprocess(rgb[0], c, (32, 32, 3))
  with pytest.raises(errors.UserError, match="are empty"):
    inference.preprocess(rgb[:, :0], c)
  c.input.mean, c.input.std = (0.5,) * 3, (0.2,) * 3  # Without the shape: mean/std's channels.
  with pytest.raises(errors.UserError, match="normalised 3"):
    inference.preprocess(rgb[..., :1], c)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120)


@pytest.mark.parametrize("args, expected", [
    (("vision_jax.main", "--config=configs/shapes_cnn.py", "--config.train.num_steps=0"),
     "config.train.num_steps=0 is out of range"),
    (("vision_jax.main", "--config=configs/shapes_cnn.py", "--config.parallel.cpu_devices=-1"),
     "config.parallel.cpu_devices=-1 is out of range"),
    (("vision_jax.main", "--config=configs/shapes_cnn.py", "--config.train.steps=3"),
     "config.train has no field 'steps'; did you mean 'num_steps'"),
    (("vision_jax.main", "--config=configs/shapes_cnn.py:foo"),
     "configs/shapes_cnn.py has no variants"),
    (("vision_jax.viz", "filters", "--filters", "blur"), "Unknown filters ['blur']"),
    (("vision_jax.tools.summary", "simple_cnn", "--image_size=2"), "smallest size it accepts"),
    (("vision_jax.tools.torch_import", "resnet18", "--torch_file=README.md", "--out=x"),
     "README.md is not a torch file"),
    (("vision_jax.data.prepare", "no_such_dataset"), "Unknown dataset 'no_such_dataset'"),
])
def test_command_lines_print_one_line_and_exit_2(tmp_path, args, expected):
  if args[0] == "vision_jax.main":
    args += (f"--workdir={tmp_path}",)
  result = _cli(*args)
  assert result.returncode == 2, result.stderr
  assert "error: " in result.stderr and expected in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # Nothing was started.


def test_traceback_flag_shows_the_traceback(tmp_path):
  result = _cli("vision_jax.main", "--config=configs/shapes_cnn.py",
                "--config.train.num_steps=0", f"--workdir={tmp_path}", "--traceback")
  assert result.returncode != 0 and "Traceback" in result.stderr
  assert "UserError: config.train.num_steps=0" in result.stderr
