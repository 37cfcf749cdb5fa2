"""Tests for the classic ImageNet/CIFAR architectures: AlexNet, ZFNet, VGG, GoogLeNet, Wide ResNet.

Parameter counts, output contracts and feature shapes only need shapes, so they use
`jax.eval_shape` (no compiling, no allocating, even for VGG-19's 144M parameters). Numeric checks
compile, so they run on small members of each family built from the classes directly (same code,
fewer filters); full GoogLeNet, whose compile takes about a minute on two CPU cores, is slow.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import models
from vision_jax.models import alexnet, googlenet, pooling, resnet, vgg, wide_resnet
from vision_jax.models import backbone as backbone_lib

_FAMILIES = ("alexnet", "zfnet", "vgg", "googlenet", "wide_resnet")  # The families tested here.
NEW_MODELS = tuple(name for name, info in models.MODEL_INFO.items() if info.family in _FAMILIES)
BATCH = 2


def _images(size: int, channels: int = 3, batch: int = BATCH) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)


def _abstract_init(model, images, train=False):
  return jax.eval_shape(functools.partial(model.init, train=train), jax.random.key(0), images)


def _abstract_apply(model, variables, images, train):
  apply = functools.partial(
      model.apply, train=train, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
  (logits, features), _ = jax.eval_shape(apply, variables, images)
  return logits, features


def _num_params(variables) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name, kwargs, expected", [
    # torchvision's counts (same layers; BatchNorm statistics are not parameters).
    ("alexnet", {}, 61_100_840),
    ("vgg11", {}, 132_863_336),
    ("vgg13", {}, 133_047_848),
    ("vgg16", {}, 138_357_544),
    ("vgg19", {}, 143_667_240),
    ("vgg16_bn", {}, 138_365_992),  # + a scale and a bias per conv filter (4,224 filters).
    ("googlenet", {"aux_logits": False}, 6_624_904),
    ("googlenet", {}, 13_004_888),  # torchvision's googlenet(aux_logits=True).
    # No reference implementation: the five convolutions of Zeiler & Fergus (2013) and AlexNet's
    # classifier.
    ("zfnet", {}, 62_357_608),
])
def test_imagenet_parameter_counts(name, kwargs, expected):
  model = models.get_model(name, num_classes=1000, **kwargs)
  assert _num_params(_abstract_init(model, _images(224, batch=1))) == expected


def test_googlenet_aux_parameters_exist_whichever_mode_initialises():
  model = models.get_model("googlenet", num_classes=1000)
  for train in (False, True):
    variables = _abstract_init(model, _images(224, batch=1), train=train)
    assert {"aux1", "aux2"} <= set(variables["params"])
    assert _num_params(variables) == 13_004_888


@pytest.mark.parametrize("name, expected", [
    # Zagoruyko & Komodakis (2016), Table 1 and Sec. 3: 36.5M and 8.9M.
    ("wrn28_10", 36_479_194),
    ("wrn40_4", 8_949_210),
])
def test_wide_resnet_parameter_counts(name, expected):
  model = models.get_model(name, num_classes=10)
  assert _num_params(_abstract_init(model, _images(32, batch=1))) == expected


@pytest.mark.parametrize("name", NEW_MODELS)
def test_output_contract(name):
  # 40 px is not a power of two, so the pools' rounding and the adaptive pools are exercised.
  images = _images(40)
  model = models.get_model(name, num_classes=7, dtype=jnp.bfloat16)
  variables = _abstract_init(model, images)
  # Mixed precision keeps parameters and BatchNorm statistics in float32.
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert ("batch_stats" in variables) == (
      models.model_info(name).family in ("googlenet", "wide_resnet")
      or getattr(model, "batch_norm", False))
  for train in (False, True):
    logits, features = _abstract_apply(model, variables, images, train)
    assert (logits.shape, logits.dtype) == ((BATCH, 7), jnp.float32)
    assert features
    for key, value in features.items():
      assert value.shape[0] == BATCH, key
      # Auxiliary classifiers' logits are float32 like the main ones; activations stay bfloat16.
      want = jnp.float32 if key.startswith("aux") else jnp.bfloat16
      assert value.dtype == want, key


def test_googlenet_aux_logits_only_in_training():
  images = _images(64)
  model = models.get_model("googlenet", num_classes=7)
  variables = _abstract_init(model, images)
  _, train_features = _abstract_apply(model, variables, images, train=True)
  for key in ("aux1", "aux2"):
    assert (train_features[key].shape, train_features[key].dtype) == ((BATCH, 7), jnp.float32)
  _, eval_features = _abstract_apply(model, variables, images, train=False)
  assert not {"aux1", "aux2"} & set(eval_features)

  # Evaluation does exactly the work of a model built without the auxiliary heads.
  def heavy_ops(module, variables):
    jaxpr = str(jax.make_jaxpr(functools.partial(module.apply, train=False))(variables, images))
    return jaxpr.count("conv_general_dilated"), jaxpr.count("dot_general")

  plain = models.get_model("googlenet", num_classes=7, aux_logits=False)
  plain_variables = _abstract_init(plain, images)
  assert heavy_ops(model, variables) == heavy_ops(plain, plain_variables)


def test_vgg16_feature_shapes():
  model = models.get_model("vgg16", num_classes=1000)
  images = _images(224)
  _, features = _abstract_apply(model, _abstract_init(model, images), images, train=False)
  shapes = {key: value.shape for key, value in features.items()}
  assert shapes == {
      "stage1": (BATCH, 112, 112, 64), "stage2": (BATCH, 56, 56, 128),
      "stage3": (BATCH, 28, 28, 256), "stage4": (BATCH, 14, 14, 512),
      "stage5": (BATCH, 7, 7, 512), "pooled": (BATCH, 7, 7, 512),
      "fc6": (BATCH, 4096), "fc7": (BATCH, 4096), "pre_logits": (BATCH, 7 * 7 * 512)}


@pytest.mark.parametrize("name, expected", [
    # torchvision's AlexNet: 55 -> pool 27, 27 -> pool 13, 13, 13, 13 -> pool 6.
    ("alexnet", {"conv1": (27, 64), "conv2": (13, 192), "conv3": (13, 384), "conv4": (13, 256),
                 "conv5": (6, 256), "pooled": (6, 256)}),
    # Zeiler & Fergus (2013), Fig. 3: 110 -> pool 55, 26 -> pool 13, 13, 13, 13 -> pool 6.
    ("zfnet", {"conv1": (55, 96), "conv2": (13, 256), "conv3": (13, 384), "conv4": (13, 384),
               "conv5": (6, 256), "pooled": (6, 256)}),
    # torchvision's GoogLeNet (ceil-mode pools).
    ("googlenet", {"stem": (28, 192), "stage3": (28, 480), "stage4": (14, 832),
                   "stage5": (7, 1024)}),
])
def test_imagenet_feature_shapes_at_224(name, expected):
  model = models.get_model(name, num_classes=1000)
  images = _images(224, batch=1)
  _, features = _abstract_apply(model, _abstract_init(model, images), images, train=False)
  for key, (size, channels) in expected.items():
    assert features[key].shape == (1, size, size, channels), key


def test_adaptive_avg_pool_matches_pytorch_bins():
  x = np.arange(2 * 5 * 3 * 1, dtype=np.float32).reshape(2, 5, 3, 1)
  # PyTorch's bins for 5 -> 3 rows: [0, 2), [1, 4), [3, 5); for 3 -> 6 columns each column twice.
  rows = [(0, 2), (1, 4), (3, 5)]
  want = np.stack([x[:, a:b].mean(axis=1) for a, b in rows], axis=1).repeat(2, axis=2)
  np.testing.assert_allclose(pooling.adaptive_avg_pool(x, (3, 6)), want, rtol=1e-6)
  assert pooling.adaptive_avg_pool(x, (5, 3)) is x


@pytest.mark.parametrize("size, window, stride, padding, ceil_mode, expected", [
    (55, 3, 2, 0, False, 27),  # AlexNet.
    (112, 3, 2, 0, True, 56),  # GoogLeNet: floor mode would give 55.
    (14, 2, 2, 0, True, 7),
    (5, 2, 2, 1, True, 3),  # PyTorch drops a last window that would start in the padding.
    (2, 3, 2, 0, False, 1),  # Smaller than one window: PyTorch fails, we pool it whole.
])
def test_torch_max_pool_sizes(size, window, stride, padding, ceil_mode, expected):
  x = np.random.default_rng(0).normal(size=(1, size, size, 2)).astype(np.float32)
  y = pooling.torch_max_pool(x, window, stride, padding, ceil_mode)
  assert y.shape == (1, expected, expected, 2)
  np.testing.assert_array_equal(y[:, 0, 0], x[:, :window - padding, :window - padding].max((1, 2)))


# Small members of each family: the same code as the registered models, fewer filters, so they
# compile in seconds.
_TINY = {
    "alexnet": functools.partial(alexnet.AlexNet, convs=(
        (8, 11, 4, 2, True), (8, 5, 1, 2, True), (8, 3, 1, 1, False), (8, 3, 1, 1, True)),
        hidden=16),
    "zfnet": functools.partial(alexnet.ZFNet, convs=(
        (8, 7, 2, 1, True), (8, 5, 2, 0, True), (8, 3, 1, 1, True)), hidden=16),
    "vgg_bn": functools.partial(vgg.VGG, stage_sizes=(1, 2, 1), widths=(8, 8, 16),
                                batch_norm=True, hidden=16, pooled_size=3),
    "wrn": functools.partial(wide_resnet.WideResNet, depth=10, widen_factor=2, dropout_rate=0.3),
    "googlenet": googlenet.GoogLeNet,
}


@pytest.mark.parametrize("name", [
    *(n for n in _TINY if n != "googlenet"),
    pytest.param("googlenet", marks=pytest.mark.slow),
])
def test_train_step_is_finite_and_reaches_every_parameter(name):
  model = _TINY[name](num_classes=5)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 5, 4)
  # "rbg" keys compile much faster on CPU than the default threefry.
  variables = jax.device_get(jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0, impl="rbg"), images))

  @jax.jit
  def loss_and_grads(params):
    def loss_fn(params):
      (logits, features), updates = model.apply(
          {**variables, "params": params}, images, train=True, mutable=["batch_stats"],
          rngs={"dropout": jax.random.key(1, impl="rbg")})
      ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()  # noqa: E731
      # GoogLeNet's auxiliary classifiers are weighed 0.3 each, as in the paper.
      loss = ce(logits) + sum(0.3 * ce(features[k]) for k in ("aux1", "aux2") if k in features)
      return loss, updates
    eval_logits, _ = model.apply({**variables, "params": params}, images, train=False)
    return jax.value_and_grad(loss_fn, has_aux=True)(params), eval_logits

  ((loss, updates), grads), eval_logits = jax.device_get(loss_and_grads(variables["params"]))
  assert np.isfinite(loss) and np.all(np.isfinite(eval_logits))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  dead = [jax.tree_util.keystr(path)
          for path, g in jax.tree_util.tree_leaves_with_path(grads) if not np.any(g != 0)]
  assert not dead, f"parameters without gradient: {dead}"
  if "batch_stats" in variables:
    changed = jax.tree.map(lambda old, new: bool(np.any(old != new)),
                           variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))
  else:
    assert not updates


# --- The backbone contract (vision_jax.models.backbone) -----------------------------------------

# What `num_classes=None` leaves out of each family: top-level parameter names.
_FAMILY_CLASSIFIERS = {
    "mlp": {"head"}, "simple_cnn": {"head"}, "resnet": {"head"}, "wide_resnet": {"head"},
    "googlenet": {"head", "aux1", "aux2"}, "alexnet": {"head", "fc6", "fc7"},
    "zfnet": {"head", "fc6", "fc7"}, "vgg": {"head", "fc6", "fc7"}}
_CLASSIFIERS = {name: _FAMILY_CLASSIFIERS[info.family]
                for name, info in models.MODEL_INFO.items()}


def _param_paths(variables) -> set[str]:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)}


@pytest.mark.parametrize("name", sorted(_CLASSIFIERS))
def test_every_zoo_model_builds_headless(name):
  """num_classes=None: no classifier parameters, logits None, the headed model's pre_logits."""
  assert set(_CLASSIFIERS) == set(models.MODELS)  # Every registered model has a record.
  images = _images(32)
  headed = models.get_model(name, num_classes=7)
  headless = models.get_model(name, num_classes=None)
  headed_vars, headless_vars = _abstract_init(headed, images), _abstract_init(headless, images)
  assert not _CLASSIFIERS[name] & set(headless_vars["params"])
  assert _CLASSIFIERS[name] <= set(headed_vars["params"])
  # The trunk is the same: the headless parameters are the headed ones minus the classifier.
  trunk = {c: {k: v for k, v in tree.items() if k not in _CLASSIFIERS[name]}
           for c, tree in headed_vars.items()}
  assert jax.tree.map(lambda x: (x.shape, x.dtype), trunk) == jax.tree.map(
      lambda x: (x.shape, x.dtype), headless_vars)
  # Training needs no 'dropout' rng: the classifier's dropout is gone with it.
  (logits, features), _ = jax.eval_shape(functools.partial(
      headless.apply, train=True, mutable=["batch_stats"]), headless_vars, images)
  assert logits is None and not {"aux1", "aux2"} & set(features)
  _, headed_features = _abstract_apply(headed, headed_vars, images, train=False)
  pre_logits = features["pre_logits"]
  assert pre_logits.ndim == 2 and pre_logits.shape == headed_features["pre_logits"].shape
  first = "fc6" if "fc6" in _CLASSIFIERS[name] else "head"  # The classifier reads pre_logits.
  assert headed_vars["params"][first]["kernel"].shape[0] == pre_logits.shape[1]


_SMALL = {  # Small members, compiled for real.
    "mlp": functools.partial(models.MLP, hidden_sizes=(16, 8)),
    "simple_cnn": functools.partial(models.SimpleCNN, features=(4, 8), hidden=16,
                                    dropout_rate=0.5),
    "resnet18": functools.partial(resnet.ResNet18, stage_sizes=(1, 1, 1, 1), num_filters=4),
    "alexnet": _TINY["alexnet"],
    "alexnet_fc_in_trunk": functools.partial(_TINY["alexnet"], fc_in_trunk=True),
    "vgg_bn": _TINY["vgg_bn"],
    "vgg_bn_fc_in_trunk": functools.partial(_TINY["vgg_bn"], fc_in_trunk=True),
    "wrn": _TINY["wrn"],
}


@pytest.mark.parametrize("name", _SMALL)
def test_headless_pre_logits_equal_the_headed_ones_on_the_same_trunk(name):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  headed, headless = _SMALL[name](num_classes=5), _SMALL[name](num_classes=None)
  variables = headed.init(jax.random.key(0, impl="rbg"), images)
  _, want = headed.apply(variables, images)
  classifier = {"head"} | ({"fc6", "fc7"} if name in ("alexnet", "vgg_bn") else set())
  trunk = {c: {k: v for k, v in tree.items() if k not in classifier}
           for c, tree in variables.items()}
  logits, got = headless.apply(trunk, images)  # Fails if the headless model needs more.
  assert logits is None
  width = {"mlp": 8, "simple_cnn": 16, "resnet18": 32, "wrn": 128}.get(name)
  if name.endswith("fc_in_trunk"):
    width = 16  # fc7's output.
    np.testing.assert_array_equal(got["pre_logits"], got["fc7"])
  if width:
    assert got["pre_logits"].shape == (2, width)
  np.testing.assert_allclose(got["pre_logits"], want["pre_logits"], rtol=1e-6, atol=1e-6)


class _TinyNet(nn.Module):
  """A user's backbone: not registered, follows the contract."""
  num_classes: int | None
  width: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.width, (3, 3), (2, 2), dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv")(x)
    features = {"stage1": x, "pre_logits": x.mean(axis=(1, 2))}  # (B, H/2, W/2, w), (B, w)
    if self.num_classes is None:
      return None, features
    return nn.Dense(self.num_classes, name="head")(features["pre_logits"]), features


class _Head(nn.Module):
  backbone: backbone_lib.Backbone
  dtype: Any = jnp.float32
  kwargs: flax.core.FrozenDict = flax.core.FrozenDict()

  @nn.compact
  def __call__(self, x, train=False):
    net = backbone_lib.build(self.backbone, dtype=self.dtype, param_dtype=jnp.float32,
                             **self.kwargs)
    _, features = net(x, train=train)
    return nn.Dense(2, name="out")(features["pre_logits"])


def test_build_takes_a_registry_name_a_constructor_or_a_module():
  images = _images(8)
  trees = []
  for backbone in ("simple_cnn", _TinyNet, functools.partial(_TinyNet, width=4),
                   _TinyNet(num_classes=None)):
    variables = _abstract_init(_Head(backbone), images)
    trees.append(variables["params"])
    assert set(variables["params"]) == {"backbone", "out"}
    assert "head" not in variables["params"]["backbone"]
  assert trees[1] == trees[2] == trees[3]
  # Fields reach registry models and constructors; unknown ones are refused by name.
  small = _abstract_init(_Head("simple_cnn", kwargs=flax.core.FrozenDict(hidden=8)), images)
  assert small["params"]["out"]["kernel"].shape == (8, 2)
  with pytest.raises(ValueError, match="no field nope"):
    _abstract_init(_Head("simple_cnn", kwargs=flax.core.FrozenDict(nope=1)), images)


@pytest.mark.parametrize("module, match", [
    (_TinyNet(num_classes=3), "num_classes=3.*num_classes=None"),
    (_TinyNet(num_classes=None, dtype=jnp.bfloat16), "dtype=.*bfloat16.*float32"),
    (_TinyNet(num_classes=None), "has no field hidden"),
])
def test_build_refuses_a_module_with_a_classifier_or_other_fields(module, match):
  with pytest.raises(ValueError, match=match):
    _abstract_init(_Head(module, kwargs=flax.core.FrozenDict(
        {"hidden": 8} if "hidden" in match else {})), _images(8))
