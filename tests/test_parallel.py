"""Strategies on 8 CPU devices: jit vs pmap, FSDP sharding, gradient accumulation, dropout.

Equivalences run in float64 (the `float64` fixture, float64 models): the numbers then agree to
about 1e-15 whatever order the sums are taken in, so `RTOL` = 1e-9 leaves a wide margin for
rounding on any CPU while any mistake in the maths (a wrong weight, a missing average, one
device's statistics) shows as a difference of 1e-3 or more.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from vision_jax import models, sharding, tasks
from vision_jax.models import precision
from vision_jax.train import loop, steps
from vision_jax.train.state import create_train_state

from test_train import tiny_config

RTOL, ATOL = 1e-9, 1e-12  # float64; see the module docstring.


class _TinyBNNet(nn.Module):
  """conv → BatchNorm → ReLU → pool → dropout → dense: the smallest net where BN statistics and
  dropout masks matter."""
  bn_axis_name: str | None = None
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float64

  @nn.compact
  def __call__(self, x, train=False):
    dtypes = {"dtype": self.dtype, "param_dtype": self.dtype}
    x = nn.Conv(8, (3, 3), strides=(2, 2), **dtypes)(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name, **dtypes)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(10, **dtypes)(x), {}


def _simple_cnn(**kwargs):
  return models.get_model("simple_cnn", num_classes=10, features=(8, 16), hidden=32,
                          **precision.dtypes("float64"), **kwargs)


def _batch(seed=0, batch_size=32):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 10, size=batch_size)}


def _train(model, strategy, *, fsdp=1, grad_accum_steps=1, num_steps=3, batch_size=32,
           optimizer=None, devices=None):
  """`num_steps` steps on fixed batches; returns the global state and the last metrics."""
  mesh = sharding.make_mesh(devices, fsdp=fsdp)
  tx = optimizer or optax.sgd(0.05, momentum=0.9)
  state = create_train_state(model, tx, jax.random.key(0), (32, 32, 3), mesh, use_ema=True)
  compiled = steps.compile_steps(mesh, state, tasks.ClassificationTask(0.1, 0.3),
                                 strategy=strategy, ema_decay=0.9,
                                 grad_accum_steps=grad_accum_steps)
  train_state = compiled.to_train_layout(state)
  for i in range(num_steps):
    train_state, metrics = compiled.train(train_state, _batch(i, batch_size))
  return compiled.to_global(train_state), jax.device_get(metrics)


def _assert_close(a, b, rtol=RTOL, atol=ATOL):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol),
               jax.device_get(a), jax.device_get(b))


def test_pmap_matches_jit_with_batchnorm_over_the_global_batch(float64):
  model = _TinyBNNet()
  jit_state, jit_metrics = _train(model, "jit")
  pmap_state, pmap_metrics = _train(model.clone(bn_axis_name=sharding.PMAP_AXIS), "pmap")
  assert int(pmap_state.step) == 3
  assert {x.dtype for x in jax.tree.leaves(pmap_state)} >= {np.dtype(np.float64)}
  assert np.dtype(np.float32) not in {x.dtype for x in jax.tree.leaves(pmap_state.params)}
  _assert_close(jit_state.params, pmap_state.params)
  _assert_close(jit_state.batch_stats, pmap_state.batch_stats)
  _assert_close(jit_state.opt_state, pmap_state.opt_state)
  _assert_close(jit_metrics, pmap_metrics)
  # The pmap result is a normal replicated global array again (savable, evaluable).
  leaf = jax.tree.leaves(pmap_state.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.addressable_shards) == 8


def test_pmap_without_synchronised_batchnorm_differs():
  """The check above can fail: per-device BatchNorm statistics give other numbers, even by
  float32's loose measure (the default precision, whose pmap path this also runs)."""
  model = _TinyBNNet(dtype=jnp.float32)
  jit_state, _ = _train(model, "jit", num_steps=2)
  local_bn_state, _ = _train(model, "pmap", num_steps=2)
  with pytest.raises(AssertionError):
    _assert_close(jit_state.params, local_bn_state.params, rtol=2e-4, atol=2e-5)


def test_one_device_matches_eight_with_batchnorm_and_dropout(float64):
  """Under jit BatchNorm and the loss see the global batch, and dropout masks are drawn for
  the global batch (threefry is partitionable): the device count changes nothing."""
  assert jax.config.jax_threefry_partitionable
  model = _TinyBNNet(dropout_rate=0.5)
  one, one_metrics = _train(model, "jit", devices=jax.devices()[:1])
  eight, eight_metrics = _train(model, "jit")
  _assert_close(one.params, eight.params)
  _assert_close(one.batch_stats, eight.batch_stats)
  _assert_close(one_metrics, eight_metrics)
  other_masks, _ = _train(model.clone(dropout_rate=0.4), "jit")  # Dropout does matter.
  with pytest.raises(AssertionError):
    _assert_close(eight.params, other_masks.params)


def test_fsdp_shards_large_parameters_and_optimizer_state_and_matches_replicated(float64):
  model = _simple_cnn(dropout_rate=0.5)
  replicated, _ = _train(model, "jit")
  sharded, _ = _train(model, "jit", fsdp=4)
  _assert_close(replicated.params, sharded.params)
  kernel = sharded.params["hidden"]["kernel"]  # (1024, 32)
  assert kernel.size >= sharding.FSDP_MIN_SIZE
  assert "fsdp" in kernel.sharding.spec and not kernel.sharding.is_fully_replicated
  assert kernel.addressable_shards[0].data.size == kernel.size // 4
  momentum = sharded.opt_state[0].trace["hidden"]["kernel"]
  assert momentum.sharding == kernel.sharding
  assert sharded.params["hidden"]["bias"].sharding.is_fully_replicated  # Too small to split.


def test_gradient_accumulation_equals_the_large_batch_step(float64):
  model = _simple_cnn()
  adam = optax.adam(1e-3)  # Adam's update is sensitive to any gradient scale mistake.
  whole, whole_metrics = _train(model, "jit", optimizer=adam)
  accumulated, accum_metrics = _train(model, "jit", grad_accum_steps=4, optimizer=adam)
  _assert_close(whole.params, accumulated.params)
  _assert_close(whole_metrics, accum_metrics)
  pmap_accumulated, _ = _train(model, "pmap", grad_accum_steps=2, optimizer=adam)
  _assert_close(whole.params, pmap_accumulated.params)


def test_pmap_run_resumes_under_jit_with_the_same_numbers(tmp_path, float64):
  """A checkpoint is plain global arrays: written under pmap, read under jit (or on other
  device counts), and training goes on at the same numbers."""
  def config(strategy, num_steps):
    c = tiny_config("cifar10", num_steps=num_steps)
    c.model.name, c.model.dtype = "resnet20", "float64"
    c.model.kwargs.update(num_filters=4, stage_sizes=(1, 1, 1))  # BatchNorm, little to compile.
    c.parallel.strategy = strategy
    c.optim.schedule, c.optim.warmup_steps = "constant", 0  # The same for 2 and 4 steps.
    return c

  with tfds.testing.mock_data(num_examples=32):
    reference = loop.train_and_evaluate(config("jit", 4), str(tmp_path / "jit"))
    loop.train_and_evaluate(config("pmap", 2), str(tmp_path / "mixed"))
    mixed = loop.train_and_evaluate(config("jit", 4), str(tmp_path / "mixed"))
  assert mixed["step"] == reference["step"] == 4
  assert mixed["loss"] == pytest.approx(reference["loss"], rel=RTOL)
  records = [json.loads(line) for line in open(tmp_path / "mixed" / "metrics.jsonl")]
  expected = [json.loads(line) for line in open(tmp_path / "jit" / "metrics.jsonl")]
  train_losses = lambda rs: [r["loss"] for r in rs if r["split"] == "train"]
  np.testing.assert_allclose(train_losses(records), train_losses(expected), rtol=RTOL)


def test_cpu_devices_cannot_change_a_started_backend_and_say_so(tmp_path, capsys):
  """In a process whose JAX already runs (here on 8 CPU devices), `parallel.cpu_devices` can't
  take effect: the run warns, naming both counts, and trains on the devices there are."""
  assert jax.device_count() == 8  # Starts the backend (if no test before has).
  sharding.use_cpu_devices(3)
  assert jax.device_count() == 8
  with pytest.raises(ValueError, match="cpu_devices=-1 must be >= 0"):
    sharding.use_cpu_devices(-1)
  c = tiny_config("mnist", num_steps=1)
  c.parallel.cpu_devices = 2
  with tfds.testing.mock_data(num_examples=16):
    assert loop.train_and_evaluate(c, str(tmp_path))["step"] == 1
  out, err = capsys.readouterr()
  assert "cpu_devices=2 not applied: JAX had already started with 8 CPU devices" in err
  assert "Devices: 8 x cpu" in out
