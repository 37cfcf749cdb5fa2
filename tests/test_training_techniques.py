"""mixup / CutMix, flip-averaged evaluation, and evaluating the raw weights beside the EMA:
the maths, the same numbers on any topology, exact resume, and the config checks."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from vision_jax import config as config_lib
from vision_jax import errors, sharding, tasks
from vision_jax.ops import mixing
from vision_jax.tasks import base
from vision_jax.tasks.classification import task as classification
from vision_jax.train import loop, steps
from vision_jax.train.state import create_train_state

from test_parallel import _TinyBNNet, _assert_close, _batch, _simple_cnn
from test_train import tiny_config

BOTH = mixing.MixOptions(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)


def _images(values):
  """(len(values), 8, 8, 1) images, each filled with one value."""
  return jnp.asarray(values, jnp.float32)[:, None, None, None] * jnp.ones((1, 8, 8, 1))


# --- The maths. ---

def test_mixup_mixes_two_one_hot_examples_into_the_mixed_target():
  task = tasks.ClassificationTask(label_smoothing=0.1, mix=mixing.MixOptions(mixup_alpha=0.4))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  batch = task.augment_batch({"image": images, "label": jnp.array([1, 3])}, jax.random.key(4))
  lam = float(batch["mix_weight"][0])
  assert 0 < lam < 1 and np.all(np.asarray(batch["mix_weight"]) == lam)
  np.testing.assert_allclose(batch["image"][0], lam * images[0] + (1 - lam) * images[1],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(batch["image"][1], lam * images[1] + (1 - lam) * images[0],
                             rtol=1e-6, atol=1e-6)
  assert batch["label_mix"].tolist() == [3, 1]  # The global batch reversed.
  targets = classification.training_targets(batch, 5, 0.1)
  want = np.zeros((2, 5))
  want[0, 1] = want[1, 3] = lam
  want[0, 3] = want[1, 1] = 1 - lam
  np.testing.assert_allclose(targets, want * 0.9 + 0.1 / 5, rtol=1e-6)  # Smoothing composes.
  # The loss is λ CE(own label) + (1 - λ) CE(partner's), each smoothed.
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5)), jnp.float32)
  loss, _ = task.loss((logits, {}), batch)
  own = classification.cross_entropy(logits, batch["label"], 0.1)
  other = classification.cross_entropy(logits, batch["label_mix"], 0.1)
  np.testing.assert_allclose(loss, jnp.mean(lam * own + (1 - lam) * other), rtol=1e-6)


def test_cutmix_keeps_exactly_the_fraction_lambda_of_each_image_after_clipping():
  options = mixing.MixOptions(cutmix_alpha=1.0)
  images = _images([1.0, 0.0, 0.0, 0.0])  # Image 0 pastes 0 into the last, i.e. counts it.
  clipped = 0
  for seed in range(40):
    mixed, lam = mixing.mix_images(images, jax.random.key(seed), options)
    kept = float(mixed[0].mean())  # Pixels of image 0 still showing its own value 1.
    assert kept == pytest.approx(float(lam), abs=1e-6)
    assert float(mixed[3].mean()) == pytest.approx(1 - float(lam), abs=1e-6)
    pasted = np.argwhere(np.asarray(mixed[0, :, :, 0]) == 0)
    if len(pasted):  # One rectangle, all of whose pixels are pasted.
      (y0, x0), (y1, x1) = pasted.min(0), pasted.max(0)
      assert len(pasted) == (y1 - y0 + 1) * (x1 - x0 + 1)
      clipped += y0 == 0 or x0 == 0 or y1 == 7 or x1 == 7
  assert clipped >= 5  # Boxes at the border were clipped, and λ still matched.


def test_mix_prob_and_switch_prob_choose_what_happens():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
  for seed in range(5):
    key = jax.random.key(seed)
    off, lam = mixing.mix_images(images, key, dataclasses.replace(BOTH, prob=0.0))
    assert float(lam) == 1.0 and np.array_equal(off, images)  # Bit for bit.
    mixed, lam = mixing.mix_images(images, key, dataclasses.replace(BOTH, switch_prob=0.0))
    changed = np.asarray(mixed != images).reshape(4, -1)
    assert changed.all(), "mixup changes every pixel"
    mixed, lam = mixing.mix_images(images, key, dataclasses.replace(BOTH, switch_prob=1.0))
    assert np.isin(np.asarray(mixed), np.asarray(images)).all(), "CutMix only moves pixels"


def test_flip_averaging_is_the_mean_softmax_and_a_no_op_for_mirror_symmetric_models(float64):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 4, 5)) * 30  # Large: some probabilities underflow.
  merged = base.merge_flipped_logits(jnp.asarray(a), jnp.asarray(b))
  assert np.isfinite(merged).all()
  np.testing.assert_allclose(jax.nn.softmax(merged), (jax.nn.softmax(a) + jax.nn.softmax(b)) / 2,
                             rtol=1e-12, atol=1e-300)

  class Pooled(nn.Module):  # Global average pooling first: blind to mirroring.
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(10, param_dtype=jnp.float64)(x.mean(axis=(1, 2))), {}

  class LeftHalf(nn.Module):  # Sees the left half only.
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(10, param_dtype=jnp.float64)(x[:, :, :16].reshape(x.shape[0], -1)), {}

  batch = {**_batch(), "weight": np.ones(32)}
  batch["image"] = batch["image"].astype(np.float64)
  for model, symmetric in ((Pooled(), True), (LeftHalf(), False)):
    plain, flipped = (_evaluate(model, tasks.ClassificationTask(), batch, eval_flip=flip)
                      for flip in (False, True))
    if symmetric:
      _assert_close(plain, flipped)
    else:
      assert abs(plain["loss"] - flipped["loss"]) > 1e-3


def test_segmentation_flip_averaging_maps_the_mirror_back_onto_its_pixels(float64):
  class PerPixel(nn.Module):  # A 1x1 convolution: mirroring the input mirrors the output.
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3, param_dtype=jnp.float64)(x), {}

  task = tasks.SegmentationTask(class_names=("a", "b", "c"), num_pictures=0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(16, 8, 8, 3)),
           "mask": rng.integers(0, 3, size=(16, 8, 8, 1)), "weight": np.ones(16)}
  plain, flipped = (_evaluate(PerPixel(), task, batch, eval_flip=flip) for flip in (False, True))
  _assert_close(plain, flipped)
  assert plain["confusion"].sum() == 16 * 64
  # Without mapping back, the mirrored prediction would land on the wrong pixels.
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, 3)))
  merged, _ = task.merge_flipped((logits, {}), (logits[:, :, ::-1], {}))
  np.testing.assert_allclose(merged, jax.nn.log_softmax(logits), rtol=1e-12)


def _evaluate(model, task, batch, *, eval_flip=False, state=None):
  mesh = sharding.make_mesh()
  if state is None:
    state = create_train_state(model, optax.sgd(0.1), jax.random.key(0), batch["image"].shape[1:],
                               mesh, use_ema=False)
  compiled = steps.compile_steps(mesh, state, task, eval_flip=eval_flip)
  return jax.device_get(compiled.evaluate(state, batch))


def test_raw_and_ema_evaluations_differ_once_the_ema_lags_and_agree_when_it_does_not():
  mesh = sharding.make_mesh()
  task = tasks.ClassificationTask()
  model = _TinyBNNet(dtype=jnp.float32)
  eval_batch = {**_batch(9), "weight": np.ones(32, np.float32)}
  for decay, equal in ((0.0, True), (0.9, False)):
    state = create_train_state(model, optax.sgd(0.1), jax.random.key(0), (32, 32, 3), mesh,
                               use_ema=True)
    compiled = steps.compile_steps(mesh, state, task, ema_decay=decay)
    np.testing.assert_array_equal(*(jax.device_get(f(state, eval_batch))["loss"]
                                    for f in (compiled.evaluate, compiled.evaluate_raw)))
    for i in range(2):
      state, _ = compiled.train(state, _batch(i))
    ema, raw = (jax.device_get(f(state, eval_batch))["loss"]
                for f in (compiled.evaluate, compiled.evaluate_raw))
    assert (ema == raw) == equal, (decay, ema, raw)


# --- The same numbers on any topology. ---

def _train_mixed(strategy, *, devices=None, grad_accum_steps=1, options=BOTH, num_steps=3):
  """`num_steps` mixed steps of a small CNN (float64) with Adam (sensitive to any gradient
  scale mistake); returns the global state, the last metrics and each step's draw."""
  mesh = sharding.make_mesh(devices)
  state = create_train_state(_simple_cnn(), optax.adam(1e-3), jax.random.key(0), (32, 32, 3),
                             mesh, use_ema=False)
  task = tasks.ClassificationTask(label_smoothing=0.1, mix=options)
  compiled = steps.compile_steps(mesh, state, task, strategy=strategy,
                                 grad_accum_steps=grad_accum_steps)
  draw = jax.jit(mixing.draw, static_argnums=(1, 2, 3))
  draws = [draw(jax.random.fold_in(jax.random.fold_in(state.rng, s), steps.AUGMENT_STREAM),
                options, 32, 32) for s in range(num_steps)]
  train_state = compiled.to_train_layout(state)
  for i in range(num_steps):
    train_state, metrics = compiled.train(train_state, _batch(i))
  return compiled.to_global(train_state), jax.device_get(metrics), draws


def test_mixing_gives_the_same_numbers_on_any_topology(float64):
  """jit on 8 devices = 1 device = pmap (partners fetched from the mirror device) = gradient
  accumulation (mixing happens before the batch is split: micro-batches keep the global pairs).
  (BatchNorm over the global batch under pmap: tests/test_parallel.py.)"""
  eight, eight_metrics, draws = _train_mixed("jit")
  kinds = {bool(cut) for lam, cut, _ in draws if float(lam) < 1}
  assert kinds == {True, False}, "both mixup and CutMix batches were trained on"
  for other in (dict(devices=jax.devices()[:1]), dict(strategy="pmap"),
                dict(grad_accum_steps=4)):
    state, metrics, _ = _train_mixed(**{"strategy": "jit", **other})
    _assert_close(eight.params, state.params)
    _assert_close(eight_metrics, metrics)
  unmixed, _, _ = _train_mixed("jit", options=mixing.MixOptions())
  with pytest.raises(AssertionError):  # Mixing did change the run.
    _assert_close(eight.params, unmixed.params)


# --- Config checks, and a killed run resumes to the same parameters. ---

@pytest.mark.parametrize("field, value, valid", [
    ("mixup_alpha", -0.2, ">= 0"), ("cutmix_alpha", float("inf"), ">= 0"),
    ("mix_prob", 1.5, "in [0, 1]"), ("mix_switch_prob", -0.1, "in [0, 1]")])
def test_bad_mixing_values_are_refused_with_the_valid_range(field, value, valid):
  c = tiny_config()
  c.train[field] = value
  with pytest.raises(errors.UserError, match=rf"config\.train\.{field}=.*{re.escape(valid)}"):
    config_lib.validate(c, num_devices=8)


@pytest.mark.parametrize("task, field, value, refused", [
    ("segmentation", "cutmix_alpha", 1.0, True), ("detection", "mixup_alpha", 0.2, True),
    ("captioning", "eval_flip", True, True), ("detection", "eval_flip", True, True),
    ("segmentation", "eval_flip", True, False)])
def test_tasks_refuse_the_techniques_they_cannot_apply_to_their_targets(task, field, value,
                                                                       refused):
  c = tiny_config()
  c.task, c.train[field] = task, value
  c.train.best_metric = tasks.TASKS.lookup(task, field="task").metric_names[0]
  c.input.crop_padding = 0
  if task == "detection":
    c.input.image_size = 64
  if not refused:
    config_lib.validate(c, num_devices=8)
    return
  with pytest.raises(errors.UserError, match=rf"config\.train\.{field}=.*{task}"):
    config_lib.validate(c, num_devices=8)


def test_mixing_flip_and_raw_eval_resume_to_the_uninterrupted_run(tmp_path, tiny_shapes_dir):
  def config(num_steps):
    c = tiny_config("synthetic_shapes/tiny32", num_steps=num_steps)
    c.dataset.data_dir, c.dataset.prepare = tiny_shapes_dir, False
    c.model.kwargs.update(features=(8, 16), hidden=32)
    c.optim.schedule, c.optim.warmup_steps = "constant", 0  # The same for 2 and 4 steps.
    c.train.mixup_alpha, c.train.cutmix_alpha = 0.8, 1.0
    c.train.eval_flip, c.train.ema_decay = True, 0.9
    return c

  assert tasks.get_task(config(4)).mix == mixing.MixOptions(0.8, 1.0, 1.0, 0.5)
  reference = loop.train_and_evaluate(config(4), str(tmp_path / "one_go"))
  halfway = loop.train_and_evaluate(config(2), str(tmp_path / "resumed"))
  resumed = loop.train_and_evaluate(config(4), str(tmp_path / "resumed"))
  assert halfway["step"] == 2 and resumed["step"] == 4
  assert {"accuracy", "raw/accuracy", "raw/loss"} <= set(resumed)
  assert resumed == reference

  def final(run):
    state = ocp.StandardCheckpointer().restore(str(tmp_path / run / "checkpoints" / "4" / "state"))
    return [state[k] for k in ("step", "params", "opt_state", "ema_params")]
  for a, b in zip(jax.tree.leaves(final("one_go")), jax.tree.leaves(final("resumed")),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_workdirs_written_before_these_fields_still_load(tmp_path):
  import json
  from vision_jax import inference
  saved = config_lib.base_config().to_dict()
  for field in ("mixup_alpha", "cutmix_alpha", "mix_prob", "mix_switch_prob", "eval_flip"):
    del saved["train"][field]
  saved["model"]["kwargs"] = {"hidden": 32}
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = inference.read_config(str(tmp_path))
  assert config.train.mixup_alpha == 0.0 and config.train.eval_flip is False
  assert config.model.kwargs.hidden == 32
  assert not tasks.get_task(config).mix.enabled


# --- Stochastic depth. ---

def test_drop_path_rates_rise_linearly_from_zero_to_the_rate():
  from vision_jax.models import layers
  np.testing.assert_allclose(layers.drop_path_rates(0.2, 9), np.linspace(0, 0.2, 9), rtol=1e-12)
  assert layers.drop_path_rates(0.3, 1) == [0.3]


def test_drop_path_drops_whole_branches_per_example():
  """Each example's branch is either all zeros or all scaled by 1 / (1 - rate)."""
  from vision_jax.models import layers

  class Branch(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, x, train):
      return layers.drop_path(x, self.rate, train)

  x = jax.random.normal(jax.random.key(0), (64, 3, 3, 2)) + 5.0
  out = Branch(0.25).apply({}, x, train=True, rngs={"dropout": jax.random.key(1)})
  # Dividing may be compiled as multiplying by 1 / 0.75: an ulp apart, far from 0.
  kept = np.all(np.isclose(out, np.asarray(x) / 0.75, rtol=1e-6, atol=0), axis=(1, 2, 3))
  skipped = np.all(np.asarray(out) == 0, axis=(1, 2, 3))
  assert (kept | skipped).all() and 6 < skipped.sum() < 28  # Whole examples, about a quarter.
  np.testing.assert_array_equal(Branch(0.25).apply({}, x, train=False), x)
  np.testing.assert_array_equal(Branch(0.0).apply({}, x, train=True), x)  # No rng needed.


@pytest.mark.parametrize("name", ["resnet20", "wrn28_10"])
def test_stochastic_depth_changes_training_only_and_no_parameters(name):
  """Same parameter tree with and without; eval and rate 0 are the plain model; in training a
  rate changes the output, differently for another dropout key."""
  from vision_jax import models
  kwargs = ({"stage_sizes": (1, 1, 1), "num_filters": 4} if name == "resnet20" else
            {"depth": 10, "widen_factor": 1})
  plain = models.get_model(name, num_classes=3, **kwargs)
  deep = models.get_model(name, num_classes=3, drop_path_rate=0.5, **kwargs)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  variables = plain.init(jax.random.key(1), x, train=False)
  assert jax.tree.structure(deep.init(jax.random.key(1), x, train=False)) == jax.tree.structure(
      variables)
  # Perturb the zero-initialised last BatchNorm scales, so that the branches matter.
  variables = jax.tree.map(lambda v: v + 0.1, variables)
  run = lambda model, train, key: model.apply(  # noqa: E731
      variables, x, train=train, rngs={"dropout": jax.random.key(key)},
      mutable=["batch_stats"] if train else False)[0][0] if train else model.apply(
          variables, x, train=False)[0]
  np.testing.assert_array_equal(run(deep, False, 0), run(plain, False, 0))
  assert not np.allclose(run(deep, True, 2), run(plain, True, 2))
  assert not np.allclose(run(deep, True, 2), run(deep, True, 3))
  np.testing.assert_array_equal(run(deep, True, 2), run(deep, True, 2))


def test_stochastic_depth_resumes_to_the_uninterrupted_run(tmp_path, tiny_shapes_dir):
  def config(num_steps):
    c = tiny_config("synthetic_shapes/tiny32", num_steps=num_steps)
    c.dataset.data_dir, c.dataset.prepare = tiny_shapes_dir, False
    c.model.name = "resnet20"
    c.model.kwargs.update(stage_sizes=(1, 1, 1), num_filters=4, drop_path_rate=0.5)
    c.optim.schedule, c.optim.warmup_steps = "constant", 0
    return c

  reference = loop.train_and_evaluate(config(4), str(tmp_path / "one_go"))
  loop.train_and_evaluate(config(2), str(tmp_path / "resumed"))
  assert loop.train_and_evaluate(config(4), str(tmp_path / "resumed")) == reference
  restore = lambda run: ocp.StandardCheckpointer().restore(  # noqa: E731
      str(tmp_path / run / "checkpoints" / "4" / "state"))["params"]
  for a, b in zip(jax.tree.leaves(restore("one_go")), jax.tree.leaves(restore("resumed")),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  without = config(4)
  without.model.kwargs.drop_path_rate = 0.0
  assert loop.train_and_evaluate(without, str(tmp_path / "without")) != reference
