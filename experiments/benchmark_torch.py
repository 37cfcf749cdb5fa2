"""The PyTorch side of `experiments/benchmark.py`: the same network, data shapes and threads.

torchvision's model where ours follows its layout layer for layer (`torch_import.SUPPORTED`:
ResNet-18..152, VGG, AlexNet, GoogLeNet); for the CIFAR ResNets and the simple CNN an
equivalent network written here, read from our registry's own fields (stage sizes, widths), so
the two cannot drift apart. Training and timing follow `../shared/bench/torch_resnet50.py`:
SGD (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-5), channels_last, bf16 by autocast,
`warmup` calls (the first one timed as "compile"), then `steps` calls between two syncs.
"""

import dataclasses
import time

import torch
from torch import nn
import torchvision

from vision_jax import models
from vision_jax.models import resnet
from vision_jax.tools import torch_import

WEIGHT_DECAY = 5e-5  # As ../shared/bench/torch_resnet50.py.
AUX_LOSS_WEIGHT = 0.3  # GoogLeNet's auxiliary heads, as `tasks.ClassificationTask`'s default.


class _BasicBlock(nn.Module):
  """Our `resnet.BasicBlock`: two 3x3 conv-BN, a projection shortcut where the shape changes."""

  def __init__(self, in_channels: int, features: int, stride: int):
    super().__init__()
    self.conv1 = nn.Sequential(
        nn.Conv2d(in_channels, features, 3, stride, 1, bias=False), nn.BatchNorm2d(features),
        nn.ReLU(inplace=True))
    self.conv2 = nn.Sequential(
        nn.Conv2d(features, features, 3, 1, 1, bias=False), nn.BatchNorm2d(features))
    nn.init.zeros_(self.conv2[1].weight)  # zero_init_scale, as ours.
    self.proj = None
    if stride != 1 or in_channels != features:
      self.proj = nn.Sequential(
          nn.Conv2d(in_channels, features, 1, stride, bias=False), nn.BatchNorm2d(features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.proj is None else self.proj(x)
    return torch.relu(shortcut + self.conv2(self.conv1(x)))


class CifarResNet(nn.Module):
  """Our CIFAR ResNets (`resnet.ResNet`, "cifar" stem): 3x3 stem, 3 stages, mean, dense."""

  def __init__(self, stage_sizes, num_filters: int, num_classes: int, channels: int = 3):
    super().__init__()
    layers = [nn.Conv2d(channels, num_filters, 3, 1, 1, bias=False),
              nn.BatchNorm2d(num_filters), nn.ReLU(inplace=True)]
    width = num_filters
    for i, num_blocks in enumerate(stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        layers.append(_BasicBlock(width, num_filters * 2**i, stride))
        width = num_filters * 2**i
    self.body = nn.Sequential(*layers)
    self.head = nn.Linear(width, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.body(x).mean(dim=(2, 3)))


def simple_cnn(features, hidden: int, num_classes: int, image_size: int,
               channels: int = 3) -> nn.Module:
  """Our `SimpleCNN`: conv3x3 (SAME, bias) → ReLU → 2x2 max-pool per width, dense, ReLU, dense."""
  layers, size, width = [], image_size, channels
  for out in features:
    layers += [nn.Conv2d(width, out, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    size, width = size // 2, out
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(size * size * width, hidden),
                       nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))


def network(name: str, num_classes: int, image_size: int, channels: int) -> nn.Module | None:
  """The PyTorch twin of registry model `name`, or None where there is none."""
  constructor = models.MODELS[name]
  keywords = getattr(constructor, "keywords", {})
  if name in torch_import.SUPPORTED and channels == 3:
    extra = {"zero_init_residual": True} if name.startswith("resnet") else {}
    if name == "googlenet":
      extra = {"aux_logits": True, "init_weights": True}
    return getattr(torchvision.models, name)(num_classes=num_classes, **extra)
  if keywords.get("stem") == "cifar" and keywords.get("block_cls") is resnet.BasicBlock:
    return CifarResNet(keywords["stage_sizes"], keywords["num_filters"], num_classes, channels)
  if name == "simple_cnn":
    defaults = {f.name: f.default for f in dataclasses.fields(models.SimpleCNN)}
    return simple_cnn(defaults["features"], defaults["hidden"], num_classes, image_size,
                      channels)
  return None


def _loss(outputs, labels: torch.Tensor) -> torch.Tensor:
  """Cross-entropy; GoogLeNet's training outputs add its auxiliary heads' losses."""
  if hasattr(outputs, "logits"):
    aux = [a for a in (outputs.aux_logits1, outputs.aux_logits2) if a is not None]
    return (nn.functional.cross_entropy(outputs.logits, labels)
            + AUX_LOSS_WEIGHT * sum(nn.functional.cross_entropy(a, labels) for a in aux))
  return nn.functional.cross_entropy(outputs, labels)


def _timed(call, device: str, warmup: int, steps: int) -> tuple[float, float]:
  """(seconds of the first call, seconds per call after `warmup` calls)."""
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  sync()
  start = time.perf_counter()
  call()
  sync()
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    call()
  sync()
  start = time.perf_counter()
  for _ in range(steps):
    call()
  sync()
  return first, (time.perf_counter() - start) / steps


def measure(name: str, *, batch_size: int, image_size: int, channels: int, num_classes: int,
            dtype: str, compiled: bool, warmup: int, steps: int, device: str) -> dict | None:
  """Train and inference timings of the twin of `name` (None where there is none)."""
  model = network(name, num_classes, image_size, channels)
  if model is None:
    return None
  model = model.to(device).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=WEIGHT_DECAY)
  generator = torch.Generator().manual_seed(0)
  x = torch.randn(batch_size, channels, image_size, image_size, generator=generator)
  x = x.to(device).to(memory_format=torch.channels_last)
  y = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16,  # noqa: E731
                                    enabled=dtype == "bfloat16")

  def step():
    with autocast():
      loss = _loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  model.train()
  train = torch.compile(step) if compiled else step
  compile_s, step_s = _timed(train, device, warmup, steps)
  model.eval()
  forward = torch.compile(model) if compiled else model
  with torch.no_grad(), autocast():
    infer_compile_s, infer_s = _timed(lambda: forward(x), device, warmup, steps)
  peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
  return {"framework": "pytorch", "mode": "torch.compile" if compiled else "eager",
          "train_images_per_sec": batch_size / step_s, "infer_images_per_sec": batch_size / infer_s,
          "step_ms": 1000 * step_s, "compile_s": compile_s, "infer_compile_s": infer_compile_s,
          "peak_mb": peak}
