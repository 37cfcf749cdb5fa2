"""Tests for vision_jax.tools.torch_import: torchvision and our models agree on the same weights.

Each case builds a torchvision model with seeded random weights, converts its state dict and
compares logits on one random batch (NCHW there, NHWC here). To make the comparison mean
something, BatchNorm gets random scales and biases and running statistics measured on another
batch and then perturbed (so that a swapped mean/var or a missed layer shows), and the head is
rescaled so that logits have unit spread (atol 1e-4 is then a relative bound). Inputs are small,
non-square and mostly odd, to exercise PyTorch's pooling sizes and adaptive-pooling bins.

Needs torch and torchvision (requirements-test.txt); skipped where they are absent.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from vision_jax import models  # noqa: E402  (after the skips, on purpose)
from vision_jax.tools import torch_import  # noqa: E402
from vision_jax.train import weights  # noqa: E402

NUM_CLASSES = 10
BATCH = 2
_ONE_CPU_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # For subprocesses.


def _randomise_batch_norm(model, gen: torch.Generator, calibration: torch.Tensor) -> None:
  """Random BN affine; running statistics from `calibration`, then perturbed."""
  norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for norm in norms:
    norm.weight.data = torch.rand(norm.num_features, generator=gen) + 0.5
    norm.bias.data = torch.randn(norm.num_features, generator=gen) * 0.1
    norm.momentum = None  # Cumulative average: after one batch, exactly that batch's statistics.
  if not norms:
    return
  model.train()
  with torch.no_grad():
    model(calibration)
  for norm in norms:
    norm.running_mean += torch.randn(norm.num_features, generator=gen) * 0.1
    norm.running_var *= torch.rand(norm.num_features, generator=gen) * 0.5 + 0.75


def _torch_model(name: str, height: int, width: int, **kwargs):
  """Seeded torchvision model in eval mode with well-scaled logits, and an NCHW input batch."""
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(0)
  builder = getattr(torchvision.models, models.model_info(name).torchvision_name)
  model = builder(num_classes=NUM_CLASSES, **kwargs)
  images = torch.randn(BATCH, 3, height, width, generator=gen)
  _randomise_batch_norm(model, gen, torch.randn(4, 3, height, width, generator=gen))
  model.eval()
  head = model.fc if hasattr(model, "fc") else model.classifier[-1]
  with torch.no_grad():
    scale = model(images).std()
    head.weight /= scale
    head.bias /= scale
  return model, images


def _ours(name: str, variables, images: torch.Tensor, train: bool = False, **kwargs):
  model = models.get_model(name, num_classes=NUM_CLASSES, **kwargs)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"])[0])
  return forward(variables, images.numpy().transpose(0, 2, 3, 1))  # (logits, features)


def _check_tree(name: str, variables, **kwargs) -> None:
  """The converted tree has the structure, shapes and dtype of our `init`."""
  model = models.get_model(name, num_classes=NUM_CLASSES, **kwargs)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  for collection in ("params", "batch_stats"):
    want = jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), abstract.get(collection, {}))
    got = jax.tree.map(lambda a: (a.shape, a.dtype), variables[collection])
    assert got == want, collection


# (name, height, width): PyTorch's floor/ceil pooling and adaptive bins on odd sizes.
_FAST_CASES = [
    ("alexnet", 227, 263),  # Before the adaptive pool: 6x7, so bins overlap on one side.
    ("vgg11", 64, 48),  # 2x1 before the adaptive pool to 7x7.
    ("vgg11_bn", 288, 40),  # 9x1: shrinking and growing bins.
    ("resnet18", 97, 33),
    ("resnet50", 65, 47),
]
# Every other supported model but GoogLeNet (tested below with its options) repeats a family.
CASES = [*_FAST_CASES, *(
    pytest.param(name, 72, 56, marks=pytest.mark.slow) for name in torch_import.SUPPORTED
    if name != "googlenet" and name not in {case[0] for case in _FAST_CASES})]


@pytest.mark.parametrize("name, height, width", CASES)
def test_logits_equal_torchvision(name, height, width):
  model, images = _torch_model(name, height, width)
  variables = torch_import.convert_state_dict(name, model.state_dict())
  _check_tree(name, variables)
  with torch.no_grad():
    theirs = model(images).numpy()
  ours, _ = _ours(name, variables, images)
  print(f"{name}: max abs difference {np.abs(ours - theirs).max():.2e}")
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_googlenet_with_transform_input_and_aux_heads_equals_torchvision():
  # Dropout 0, so that training mode (the only one that runs the aux heads) is deterministic.
  model, images = _torch_model("googlenet", 99, 81, aux_logits=True, transform_input=True,
                               init_weights=True, dropout=0.0, dropout_aux=0.0)
  variables = torch_import.convert_state_dict("googlenet", model.state_dict())
  kwargs = {"transform_input": True, "dropout_rate": 0.0, "aux_dropout_rate": 0.0}
  _check_tree("googlenet", variables, **kwargs)
  with torch.no_grad():
    theirs = model(images).numpy()
    model.train()  # Batch statistics; returns (logits, aux2, aux1).
    theirs_train = [t.numpy() for t in model(images)]
  ours, _ = _ours("googlenet", variables, images, **kwargs)
  print(f"googlenet: max abs difference {np.abs(ours - theirs).max():.2e}")
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
  ours_logits, features = _ours("googlenet", variables, images, train=True, **kwargs)
  ours_train = [ours_logits, features["aux2"], features["aux1"]]
  for name, a, b in zip(("train logits", "aux2", "aux1"), ours_train, theirs_train):
    print(f"googlenet {name}: max abs difference {np.abs(a - b).max():.2e}")
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)


def test_googlenet_without_aux_heads_converts_to_aux_logits_false():
  model = torchvision.models.googlenet(num_classes=NUM_CLASSES, aux_logits=False,
                                       init_weights=True)
  variables = torch_import.convert_state_dict("googlenet", model.state_dict())
  _check_tree("googlenet", variables, aux_logits=False)


@pytest.fixture(scope="module")
def resnet18_state_dict():
  torch.manual_seed(0)
  return torchvision.models.resnet18(num_classes=NUM_CLASSES).state_dict()


def test_numpy_arrays_convert_like_tensors_and_torch_is_not_imported(resnet18_state_dict):
  as_numpy = {k: v.numpy() for k, v in resnet18_state_dict.items()}
  jax.tree.map(np.testing.assert_array_equal,
               torch_import.convert_state_dict("resnet18", as_numpy),
               torch_import.convert_state_dict("resnet18", resnet18_state_dict))
  code = "import sys; import vision_jax.tools.torch_import; assert 'torch' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True, env=_ONE_CPU_ENV)


def test_every_supported_model_names_a_torchvision_builder():
  # SUPPORTED comes from the records; the cases above convert each of them.
  for name in torch_import.SUPPORTED:
    assert callable(getattr(torchvision.models, models.model_info(name).torchvision_name)), name


def test_unsupported_model_is_named_with_the_choices(resnet18_state_dict):
  with pytest.raises(ValueError, match=r"'resnet20'.*valid choices.*'resnet18'"):
    torch_import.convert_state_dict("resnet20", resnet18_state_dict)


def test_missing_unexpected_and_mismatched_keys_are_all_listed(resnet18_state_dict):
  state_dict = dict(resnet18_state_dict)
  del state_dict["layer2.0.downsample.1.running_var"]
  state_dict["layer5.0.conv1.weight"] = state_dict["layer4.0.conv1.weight"]
  state_dict["layer1.1.conv2.weight"] = state_dict["layer1.1.conv2.weight"][:, :32]
  with pytest.raises(ValueError) as error:
    torch_import.convert_state_dict("resnet18", state_dict)
  message = str(error.value)
  assert "missing keys: ['layer2.0.downsample.1.running_var']" in message
  assert "unexpected keys: ['layer5.0.conv1.weight']" in message
  assert "layer1.1.conv2.weight: (64, 32, 3, 3) in torch" in message


def test_missing_head_is_reported(resnet18_state_dict):
  state_dict = {k: v for k, v in resnet18_state_dict.items() if not k.startswith("fc.")}
  with pytest.raises(ValueError, match=r"missing keys: \['fc.weight', 'fc.bias'\]|"
                     r"missing keys: \['fc.bias', 'fc.weight'\]"):
    torch_import.convert_state_dict("resnet18", state_dict)


def test_command_line_round_trip(resnet18_state_dict, tmp_path):
  torch_file, out = tmp_path / "resnet18.pth", tmp_path / "converted"
  torch.save(resnet18_state_dict, torch_file)
  result = subprocess.run(
      [sys.executable, "-m", "vision_jax.tools.torch_import", "resnet18",
       f"--torch_file={torch_file}", f"--out={out}"],
      capture_output=True, text=True, env=_ONE_CPU_ENV, check=False)
  assert result.returncode == 0, result.stderr
  assert "Wrote resnet18 (11,181,642 parameters)" in result.stdout
  # What the weights expect, from the model's record.
  assert "224x224x3 images normalised with mean (0.485, 0.456, 0.406)" in result.stdout
  loaded = weights.load_converted(str(out))
  expected = torch_import.convert_state_dict("resnet18", resnet18_state_dict)
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  assert {a.dtype for a in jax.tree.leaves(loaded)} == {np.dtype(np.float32)}
