"""Per-model facts: one `ModelInfo` record per built-in variant, keyed by registry name.

Everything that describes a zoo model rather than computes it is written here once and read by
its consumers: the ImageNet recipe of its family (`vision_jax.recipes`), its torchvision layout
(`vision_jax.tools.torch_import`), its usual input for `vision_jax.tools.summary` and the zoo
table (`experiments/zoo_table.py` → docs/zoo.md), and the tests that go over the zoo.

A record is optional: a model registered by user code without one works everywhere (`model_info`
gives None, and each consumer falls back to its defaults, e.g. 224×224×3 with 1000 classes).
"""

import dataclasses

# Per-channel statistics on [0, 1] pixels of the datasets the zoo is trained on.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.286,), (0.353,)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What is known about one model variant besides its code.

  Attributes:
    name: Registry name (a key of `vision_jax.models.MODELS`).
    family: Architecture family ("resnet", "vgg", ...): picks the ImageNet recipe of
      `vision_jax.recipes` and the torchvision layout of `vision_jax.tools.torch_import`.
    input_size: (H, W, C) of the images the model is usually run on (its dataset's); the zoo
      table and `tools.summary` measure it there.
    num_classes: Classes of that dataset.
    mean: Per-channel mean on [0, 1] pixels its inputs are normalised with.
    std: Per-channel standard deviation, likewise.
    torchvision_name: The torchvision builder with the same layout, layer for layer, whose
      weights `tools.torch_import` converts; None where there is none.
    ilsvrc: The architecture's ILSVRC result as the course notes give it, e.g. "2015 (winner)";
      empty where it took no part.
  """

  name: str
  family: str
  input_size: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  torchvision_name: str | None = None
  ilsvrc: str = ""


# The usual input of each kind of model: (H, W, C), classes, mean, std.
_FASHION_MNIST = {"input_size": (28, 28, 1), "num_classes": 10, "mean": FASHION_MNIST_MEAN,
                  "std": FASHION_MNIST_STD}
_CIFAR10 = {"input_size": (32, 32, 3), "num_classes": 10, "mean": CIFAR10_MEAN,
            "std": CIFAR10_STD}
_IMAGENET = {"input_size": (224, 224, 3), "num_classes": 1000, "mean": IMAGENET_MEAN,
             "std": IMAGENET_STD}


def _imagenet(name: str, family: str, ilsvrc: str, torchvision: bool = True) -> ModelInfo:
  """An ImageNet model; `torchvision`: torchvision has a builder of the same name."""
  return ModelInfo(name, family, **_IMAGENET, torchvision_name=name if torchvision else None,
                   ilsvrc=ilsvrc)


# In the order of `MODELS` (tests/test_zoo.py checks that both name the same models).
MODEL_INFO: dict[str, ModelInfo] = {info.name: info for info in (
    ModelInfo("mlp", "mlp", **_FASHION_MNIST),
    ModelInfo("simple_cnn", "simple_cnn", **_FASHION_MNIST),
    ModelInfo("resnet20", "resnet", **_CIFAR10),
    ModelInfo("resnet32", "resnet", **_CIFAR10),
    ModelInfo("resnet56", "resnet", **_CIFAR10),
    ModelInfo("wrn28_10", "wide_resnet", **_CIFAR10),
    ModelInfo("wrn40_4", "wide_resnet", **_CIFAR10),
    *(_imagenet(f"resnet{depth}", "resnet", "2015 (winner)") for depth in (18, 34, 50, 101, 152)),
    _imagenet("alexnet", "alexnet", "2012 (winner)"),
    _imagenet("zfnet", "zfnet", "2013 (winner)", torchvision=False),
    *(_imagenet(f"vgg{depth}{bn}", "vgg", "2014 (2nd)")
      for bn in ("", "_bn") for depth in (11, 13, 16, 19)),
    _imagenet("googlenet", "googlenet", "2014 (winner)"),
)}


def model_info(name: str) -> ModelInfo | None:
  """The record of model `name`, or None (a model registered without one)."""
  return MODEL_INFO.get(name)
