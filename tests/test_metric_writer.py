"""Metric sinks: metrics.jsonl, TensorBoard scalars and pictures (read back with TensorBoard's
own reader), Weights & Biases (a stand-in module records the calls)."""

import json
import time
import sys
import types

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from vision_jax.train import loop, metric_writer

from test_workdir import _config


def _events(workdir):
  accumulator = event_accumulator.EventAccumulator(
      str(workdir / "tensorboard"), size_guidance={event_accumulator.IMAGES: 0,
                                                   event_accumulator.SCALARS: 0})
  return accumulator.Reload()


def _png(path, size=(12, 8)):
  Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(path)
  return str(path)


def test_scalars_and_pictures_reach_jsonl_and_tensorboard(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write(step, "train", {"loss": np.float32(1.0 / step)})
  writer.write_image(3, "eval/segmentation", _png(tmp_path / "picture.png"))
  writer.close()
  records = metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3] and records[2]["loss"] == np.float32(1 / 3)
  events = _events(tmp_path)
  assert [e.value for e in events.Scalars("train/loss")] == [1.0, np.float32(0.5),
                                                             np.float32(1 / 3)]
  [image] = events.Images("eval/segmentation")
  assert (image.step, image.width, image.height) == (3, 12, 8)
  assert image.encoded_image_string == open(tmp_path / "picture.png", "rb").read()


def test_a_resumed_writer_makes_tensorboard_drop_the_steps_it_rewrites(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write(step, "train", {"loss": float(step)})
  writer.close()  # Killed after step 4; the checkpoint was at step 2.
  # TensorBoard reads event files in name order: creation second, host, process, then a counter
  # of the writers this process made, as text ("10" < "9"). A resumed run starts seconds later
  # in a new process; here, in one process, wait for the next second as that run would.
  time.sleep(1.1)
  writer = metric_writer.MetricWriter(str(tmp_path), start_step=2)
  for step in (3, 4):
    writer.write(step, "train", {"loss": 10.0 * step})
  writer.close()
  assert [(e.step, e.value) for e in _events(tmp_path).Scalars("train/loss")] == [
      (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_wandb_gets_config_scalars_pictures_and_keeps_its_run_id_on_resume(tmp_path,
                                                                          monkeypatch):
  calls = []

  class _Run:
    def log(self, values, step):
      calls.append(("log", step, sorted(values)))

    def finish(self):
      calls.append(("finish",))

  def init(**kwargs):
    calls.append(("init", kwargs["project"], kwargs["id"], kwargs["resume"],
                  kwargs["config"]["seed"]))
    return _Run()

  fake = types.SimpleNamespace(init=init, Image=lambda path: path,
                               util=types.SimpleNamespace(generate_id=lambda: "run123"))
  monkeypatch.setitem(sys.modules, "wandb", fake)
  for start in (0, 5):
    writer = metric_writer.MetricWriter(str(tmp_path), start_step=start, wandb_project="p",
                                        config={"seed": 7})
    writer.write(start + 1, "eval", {"accuracy": 0.5})
    writer.write_image(start + 1, "curves", _png(tmp_path / "c.png"))
    writer.close()
  first_run = [("init", "p", "run123", "allow", 7), ("log", 1, ["eval/accuracy"]),
               ("log", 1, ["curves"]), ("finish",)]
  resumed = [("init", "p", "run123", "allow", 7), ("log", 6, ["eval/accuracy"]),
             ("log", 6, ["curves"]), ("finish",)]
  assert calls == first_run + resumed


def test_asking_for_wandb_without_it_installed_is_a_clear_error(monkeypatch, tiny_shapes_dir):
  import importlib.util
  import pytest
  from vision_jax import config as config_lib, errors
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  c = _config(tiny_shapes_dir)
  c.train.wandb_project = "p"
  with pytest.raises(errors.UserError, match="needs the wandb package: pip install wandb"):
    config_lib.validate(c, num_devices=8)


def test_a_run_sends_its_curves_to_tensorboard(tmp_path, tiny_shapes_dir):
  loop.train_and_evaluate(_config(tiny_shapes_dir), str(tmp_path))
  [image] = _events(tmp_path).Images("curves")
  assert image.step == 2 and image.encoded_image_string == open(tmp_path / "curves.png",
                                                                "rb").read()
  assert json.load(open(tmp_path / "config.json"))["train"]["wandb_project"] == ""
