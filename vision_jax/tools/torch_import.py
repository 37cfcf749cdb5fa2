"""torchvision weights for our linen models: convert a state dict, save it, load it back.

    python -m vision_jax.tools.torch_import resnet50 --torch_file=resnet50.pth --out=/abs/dir

Supported (`SUPPORTED`): every zoo model whose record names a torchvision builder
(`ModelInfo.torchvision_name` in `vision_jax.models.info`): the ImageNet ResNets, AlexNet, VGG
with and without BatchNorm, and GoogLeNet, whose layouts ours follow layer for layer. The saved
directory is an orbax checkpoint of just `{"params", "batch_stats"}`, as `model.init` returns
them for that model with `num_classes` taken from the state dict's last layer;
`vision_jax.train.weights.load_converted` reads it back as NumPy.

The conversion walks our variable tree (from `jax.eval_shape`, so nothing is computed) and takes
each leaf from its torchvision key, so it fails with every missing, unexpected and mis-shaped key
listed rather than dropping or inventing a weight. Layouts: convolutions OIHW -> HWIO, dense
(out, in) -> (in, out), BatchNorm weight/bias -> params scale/bias and running_mean/var ->
batch_stats mean/var (num_batches_tracked is dropped). The first dense layer after a flatten
(AlexNet/VGG `fc6`, GoogLeNet `aux*/fc1`) also has its input rows permuted from torch's (C, H, W)
order to our NHWC (H, W, C) order.

GoogLeNet:
- Auxiliary heads follow the state dict: torchvision's `googlenet(aux_logits=True)` (the default
  with random init, and the raw IMAGENET1K_V1 file) has `aux1.*`/`aux2.*` and converts to our
  default `aux_logits=True` tree; a state dict without them (a model built with
  `googlenet(weights=..., aux_logits=False)`) converts to our `aux_logits=False` tree. Build the
  model to match. (torchvision warns that the released aux heads are not trained.)
- torchvision's pretrained GoogLeNet sets `transform_input=True`; ours defaults to False, as
  torchvision's random init does. Weights do not record it, so build our model with
  `transform_input=True` when using converted IMAGENET1K_V1 weights.

This module does not import torch: state dict values may be NumPy arrays, torch tensors or
anything `np.asarray` takes. Only `load_torch_file` (and so the command line) needs torch.
"""

import dataclasses
import functools
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

from absl import app, flags
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import errors, models
from vision_jax.train import weights

# Our registry names of the models torchvision has, from their records.
SUPPORTED = tuple(name for name, info in models.MODEL_INFO.items() if info.torchvision_name)

# (collection, our leaf name) -> torch parameter or buffer name.
_LEAF_NAMES = {
    ("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
_GOOGLENET_BRANCHES = {
    "b1": "branch1", "b2_reduce": "branch2.0", "b2": "branch2.1", "b3_reduce": "branch3.0",
    "b3": "branch3.1", "b4": "branch4.1", "norm": "bn"}


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How one torchvision family names our modules.

  Attributes:
    module: Our module path (e.g. ("stage1_block1", "conv1", "norm")) -> torch module name
      (e.g. "layer1.0.bn1").
    flattened: Our dense layers that follow a flatten -> the (C, H, W) map they flatten.
    head: torch name of the last layer's weight, whose rows give `num_classes`.
  """
  module: Callable[[tuple[str, ...]], str]
  flattened: dict[tuple[str, ...], tuple[int, int, int]]
  head: str


def _resnet_module(path: tuple[str, ...]) -> str:
  if path == ("head",):
    return "fc"
  if path[0] == "stem":
    return {"conv": "conv1", "norm": "bn1"}[path[1]]
  stage, block = re.fullmatch(r"stage(\d+)_block(\d+)", path[0]).groups()
  prefix = f"layer{stage}.{int(block) - 1}"
  layer, kind = path[1:]
  if layer == "proj":
    return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
  return f"{prefix}.{'conv' if kind == 'conv' else 'bn'}{layer.removeprefix('conv')}"


def _sequential_layout(names: dict[str, str], flattened: tuple[int, int, int]) -> _Layout:
  return _Layout(module=lambda path: names[path[0]], flattened={("fc6",): flattened},
                 head="classifier.6.weight")


def _alexnet_layout(model: models.alexnet.AlexNet) -> _Layout:
  # torchvision's `features`: conv, ReLU[, max-pool] per layer; `classifier`: dropout, fc6, ReLU,
  # dropout, fc7, ReLU, head.
  names, index = {}, 0
  for i, (*_, pool) in enumerate(model.convs):
    names[f"conv{i + 1}"] = f"features.{index}"
    index += 3 if pool else 2
  names.update(fc6="classifier.1", fc7="classifier.4", head="classifier.6")
  return _sequential_layout(names, (model.convs[-1][0], model.pooled_size, model.pooled_size))


def _vgg_layout(model: models.vgg.VGG) -> _Layout:
  # torchvision's `features`: conv[, BN], ReLU per layer, a max-pool per stage; `classifier`:
  # fc6, ReLU, dropout, fc7, ReLU, dropout, head.
  names, index = {}, 0
  for stage, num_convs in enumerate(model.stage_sizes):
    for j in range(num_convs):
      name = f"stage{stage + 1}_conv{j + 1}"
      names[name] = f"features.{index}"
      if model.batch_norm:
        names[f"{name}_bn"] = f"features.{index + 1}"
      index += 3 if model.batch_norm else 2
    index += 1
  names.update(fc6="classifier.0", fc7="classifier.3", head="classifier.6")
  return _sequential_layout(names, (model.widths[-1], model.pooled_size, model.pooled_size))


def _layout(model_name: str, model: Any) -> _Layout:
  family = models.model_info(model_name).family
  if family == "alexnet":
    return _alexnet_layout(model)
  if family == "vgg":
    return _vgg_layout(model)
  if family == "googlenet":
    # Our names equal torchvision's except the inception branches and "norm" for "bn"; the aux
    # heads flatten a (128, 4, 4) map.
    return _Layout(
        module=lambda path: "fc" if path == ("head",) else ".".join(
            _GOOGLENET_BRANCHES.get(p, p) for p in path),
        flattened={("aux1", "fc1"): (128, 4, 4), ("aux2", "fc1"): (128, 4, 4)},
        head="fc.weight")
  return _Layout(module=_resnet_module, flattened={}, head="fc.weight")


def _to_numpy(value: Any) -> np.ndarray:
  """A float32 NumPy copy of an array or tensor (torch tensors: detached, on CPU, as float)."""
  if hasattr(value, "detach"):  # A torch tensor; duck-typed so that torch is not imported.
    value = value.detach().cpu().float().numpy()
  return np.array(value, dtype=np.float32)


def _to_flax(value: np.ndarray, chw: tuple[int, int, int] | None) -> np.ndarray:
  """Reorders a torch weight into our layout (biases and BatchNorm vectors are unchanged)."""
  if value.ndim == 4:  # (O, I, H, W) -> (H, W, I, O)
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if value.ndim == 2:  # (out, in) -> (in, out)
    if chw is not None and value.shape[1] == np.prod(chw):
      # Input index c*H*W + h*W + w (NCHW flatten) -> h*W*C + w*C + c (NHWC flatten).
      value = value.reshape(value.shape[0], *chw).transpose(0, 2, 3, 1).reshape(value.shape)
    return np.ascontiguousarray(value.T)
  return value


def convert_state_dict(model_name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a torchvision state dict into our model's variables.

  Args:
    model_name: One of `SUPPORTED` (our registry name).
    state_dict: The `model.state_dict()` of torchvision's model of that layout (its builder is
      the record's `torchvision_name`): names -> arrays or tensors.

  Returns:
    `{"params": ..., "batch_stats": ...}` of float32 NumPy arrays, with the tree structure and
    shapes of `models.get_model(model_name, num_classes=N).init(...)`, N the rows of the state
    dict's last layer (GoogLeNet: with `aux_logits` as the state dict has them, see above).
    `batch_stats` is empty for models without BatchNorm.

  Raises:
    errors.UserError: If the model is not supported, or if any of our variables has no torch
      key, any torch key is left over, or any shape does not match; the message lists them all.
  """
  if model_name not in SUPPORTED:
    raise errors.UserError(f"Cannot convert torchvision weights for {model_name!r}; valid "
                           f"choices: {list(SUPPORTED)}")
  arrays = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
  kwargs = {}
  if model_name == "googlenet":
    kwargs["aux_logits"] = any(k.startswith(("aux1.", "aux2.")) for k in arrays)
  # Infer the class count from the head; without one, the missing key is reported below.
  layout = _layout(model_name, models.get_model(model_name, num_classes=1, **kwargs))
  num_classes = np.shape(arrays[layout.head])[0] if layout.head in arrays else 1000
  model = models.get_model(model_name, num_classes=num_classes, **kwargs)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)  # Any size: shapes do not depend.
  abstract = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), images)

  converted, used, missing, mismatched = {}, set(), [], []
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    collection, *module, name = path
    key = f"{layout.module(tuple(module))}.{_LEAF_NAMES[collection, name]}"
    if key not in arrays:
      missing.append(key)
      continue
    used.add(key)
    torch_value = _to_numpy(arrays[key])
    value = _to_flax(torch_value, layout.flattened.get(tuple(module)))
    if value.shape != leaf.shape:
      mismatched.append(f"{key}: {torch_value.shape} in torch, we need {leaf.shape} after "
                        f"the layout change at {'/'.join(path)}")
    converted[path] = value
  unexpected = sorted(set(arrays) - used)
  if missing or unexpected or mismatched:
    fields = ", ".join(f"{k}={v}" for k, v in {"num_classes": num_classes, **kwargs}.items())
    raise errors.UserError(
        f"torchvision state dict does not match our {model_name!r} ({fields}):\n"
        f"  missing keys: {missing}\n  unexpected keys: {unexpected}\n"
        f"  shape mismatches: {mismatched}")
  variables = traverse_util.unflatten_dict(converted)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def load_torch_file(path: str) -> dict[str, np.ndarray]:
  """Reads a torch `.pth` state dict (or a checkpoint dict holding one) as NumPy arrays.

  Raises:
    errors.UserError: naming the file when it is missing, no torch file, or no state dict (e.g.
      a whole pickled model, `torch.save(model)`).
  """
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  save_state_dict = "save the weights with `torch.save(model.state_dict(), path)`"
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"--torch_file {path!r} does not exist.")
  with open(path, "rb") as f:
    pickled = f.read(1) == b"\x80"  # torch.save's legacy format is a pickle; else a zip.
  if not (pickled or zipfile.is_zipfile(path)):
    raise errors.UserError(f"{path} is not a torch file (no zip archive or pickle); "
                           f"{save_state_dict}.")
  try:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (junk fails anywhere in unpickling)
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
      raise errors.UserError(
          f"{path} holds pickled Python objects, not only tensors (e.g. a whole model saved "
          f"with `torch.save(model)`); {save_state_dict}.") from e
    why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise errors.UserError(f"{path} is not a torch file torch.load can read ({why}); "
                           f"{save_state_dict}.") from e
  for key in ("state_dict", "model"):  # Common wrappers of training checkpoints.
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get(key), Mapping):
      state_dict = state_dict[key]
  if not isinstance(state_dict, Mapping):
    raise errors.UserError(f"{path} holds a {type(state_dict).__name__}, not a state dict "
                           f"(names -> tensors); {save_state_dict}.")
  return {k: _to_numpy(v) for k, v in state_dict.items()}


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(f"Name one model; valid choices: {list(SUPPORTED)}")
  torch_file, out = flags.FLAGS.torch_file, flags.FLAGS.out
  variables = convert_state_dict(argv[1], load_torch_file(torch_file))
  weights.save_converted(variables, out)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
  print(f"Wrote {argv[1]} ({num_params:,} parameters) to {os.path.abspath(out)}")
  info = models.model_info(argv[1])
  height, width, channels = info.input_size
  print(f"torchvision's pretrained weights expect {height}x{width}x{channels} images normalised "
        f"with mean {info.mean} and std {info.std} (config.input.mean and .std)"
        f"{'; build googlenet with transform_input=True' if info.family == 'googlenet' else ''}.")


if __name__ == "__main__":
  # Defined here rather than at import, so that importing this module adds no flags that could
  # clash with the importer's.
  flags.DEFINE_string("torch_file", None, "torchvision state dict (.pth).", required=True)
  flags.DEFINE_string("out", None, "Directory to write the converted variables to (must not "
                      "exist).", required=True)
  errors.run(main)
