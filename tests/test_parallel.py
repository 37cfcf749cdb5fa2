"""Strategies on 8 CPU devices: jit vs pmap, FSDP sharding, gradient accumulation."""

import json

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from vision_jax import models, tasks
from vision_jax.train import loop, parallel, steps
from vision_jax.train.state import create_train_state

from test_train import tiny_config


class _TinyBNNet(nn.Module):
  """conv → BatchNorm → ReLU → pool → dense: the smallest net where BN statistics matter."""
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(10)(x), {}


def _batch(seed=0, batch_size=32):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 10, size=batch_size)}


def _train(model, strategy, *, fsdp=1, grad_accum_steps=1, num_steps=3, batch_size=32,
           optimizer=None):
  """`num_steps` steps on fixed batches; returns the global state and the last metrics."""
  mesh = parallel.make_mesh(fsdp=fsdp)
  tx = optimizer or optax.sgd(0.05, momentum=0.9)
  state = create_train_state(model, tx, jax.random.key(0), (32, 32, 3), mesh, use_ema=True)
  compiled = steps.compile_steps(mesh, state, tasks.ClassificationTask(0.1, 0.3),
                                 strategy=strategy, ema_decay=0.9,
                                 grad_accum_steps=grad_accum_steps)
  train_state = compiled.to_train_layout(state)
  for i in range(num_steps):
    train_state, metrics = compiled.train(train_state, _batch(i, batch_size))
  return compiled.to_global(train_state), jax.device_get(metrics)


def _assert_close(a, b, rtol=2e-4, atol=2e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol),
               jax.device_get(a), jax.device_get(b))


def test_pmap_matches_jit_with_batchnorm_over_the_global_batch():
  model = _TinyBNNet()
  jit_state, jit_metrics = _train(model, "jit")
  pmap_state, pmap_metrics = _train(model.clone(bn_axis_name=parallel.PMAP_AXIS), "pmap")
  assert int(pmap_state.step) == 3
  _assert_close(jit_state.params, pmap_state.params)
  _assert_close(jit_state.batch_stats, pmap_state.batch_stats)
  _assert_close(jit_state.opt_state, pmap_state.opt_state)
  _assert_close(jit_metrics, pmap_metrics)
  # The pmap result is a normal replicated global array again (savable, evaluable).
  leaf = jax.tree.leaves(pmap_state.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.addressable_shards) == 8


def test_pmap_without_synchronised_batchnorm_differs():
  """The check above can fail: per-device BatchNorm statistics give other numbers."""
  model = _TinyBNNet()
  jit_state, _ = _train(model, "jit", num_steps=2)
  local_bn_state, _ = _train(model, "pmap", num_steps=2)
  with pytest.raises(AssertionError):
    _assert_close(jit_state.params, local_bn_state.params)


def test_fsdp_shards_large_parameters_and_optimizer_state_and_matches_replicated():
  model = models.get_model("simple_cnn", num_classes=10, dropout_rate=0.0)
  replicated, _ = _train(model, "jit")
  sharded, _ = _train(model, "jit", fsdp=4)
  _assert_close(replicated.params, sharded.params)
  kernel = sharded.params["hidden"]["kernel"]  # (4096, 128)
  assert kernel.size >= parallel.FSDP_MIN_SIZE
  assert "fsdp" in kernel.sharding.spec and not kernel.sharding.is_fully_replicated
  assert kernel.addressable_shards[0].data.size == kernel.size // 4
  momentum = sharded.opt_state[0].trace["hidden"]["kernel"]
  assert momentum.sharding == kernel.sharding
  assert sharded.params["hidden"]["bias"].sharding.is_fully_replicated  # Too small to split.


def test_gradient_accumulation_equals_the_large_batch_step():
  model = models.get_model("simple_cnn", num_classes=10, dropout_rate=0.0)
  adam = optax.adam(1e-3)  # Adam's update is sensitive to any gradient scale mistake.
  whole, whole_metrics = _train(model, "jit", optimizer=adam)
  accumulated, accum_metrics = _train(model, "jit", grad_accum_steps=4, optimizer=adam)
  _assert_close(whole.params, accumulated.params)
  _assert_close(whole_metrics, accum_metrics, rtol=1e-4)
  pmap_accumulated, _ = _train(model, "pmap", grad_accum_steps=2, optimizer=adam)
  _assert_close(whole.params, pmap_accumulated.params)


def test_pmap_run_resumes_under_jit_with_the_same_numbers(tmp_path):
  """A checkpoint is plain global arrays: written under pmap, read under jit (or on other
  device counts), and training goes on at the same numbers."""
  def config(strategy, num_steps):
    c = tiny_config("cifar10", num_steps=num_steps)
    c.model.name = "resnet20"
    c.parallel.strategy = strategy
    c.optim.name = "sgd"  # Adam turns float noise in ~0 gradients into lr-sized steps.
    c.optim.schedule, c.optim.warmup_steps = "constant", 0  # The same for 2 and 4 steps.
    c.train.checkpoint_every = 2
    return c

  with tfds.testing.mock_data(num_examples=48):
    reference = loop.train_and_evaluate(config("jit", 4), str(tmp_path / "jit"))
    loop.train_and_evaluate(config("pmap", 2), str(tmp_path / "mixed"))
    mixed = loop.train_and_evaluate(config("jit", 4), str(tmp_path / "mixed"))
  assert mixed["step"] == reference["step"] == 4
  assert mixed["loss"] == pytest.approx(reference["loss"], rel=1e-4)
  records = [json.loads(line) for line in open(tmp_path / "mixed" / "metrics.jsonl")]
  expected = [json.loads(line) for line in open(tmp_path / "jit" / "metrics.jsonl")]
  train_losses = lambda rs: [r["loss"] for r in rs if r["split"] == "train"]
  np.testing.assert_allclose(train_losses(records), train_losses(expected), rtol=1e-4)
