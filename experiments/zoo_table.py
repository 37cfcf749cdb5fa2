"""Prints the README's model table: parameters and inference FLOPs of every registry model.

    python experiments/zoo_table.py > /tmp/zoo.md

FLOPs are XLA's count for one image (a multiply-add counts as 2) at the model's usual input
size: 224×224×3 for the ImageNet models, 32×32×3 for the CIFAR ones, 28×28×1 for the small
ones. The ILSVRC column is the year the course notes give for the architecture.
"""

from vision_jax import models
from vision_jax.tools import summary

_ILSVRC_YEAR = {"alexnet": "2012 (winner)", "zfnet": "2013 (winner)", "vgg": "2014 (2nd)",
                "googlenet": "2014 (winner)", "resnet": "2015 (winner)"}
_SMALL = ("mlp", "simple_cnn")
_CIFAR = ("resnet20", "resnet32", "resnet56", "wrn28_10", "wrn40_4")


def _input(name: str) -> tuple[int, int, int]:
  """(image size, channels, classes) the model is usually run at."""
  if name in _SMALL:
    return 28, 1, 10
  if name in _CIFAR:
    return 32, 3, 10
  return 224, 3, 1000


def _year(name: str) -> str:
  if name in _SMALL or name in _CIFAR:
    return ""
  return next(year for family, year in _ILSVRC_YEAR.items() if name.startswith(family))


def main() -> None:
  print("| model | input | classes | parameters | GFLOPs / image | ILSVRC |")
  print("|---|---|---|---:|---:|---|")
  for name in models.MODELS:
    size, channels, classes = _input(name)
    stats = summary.model_stats(name, size, channels, classes)
    print(f"| `{name}` | {size}×{size}×{channels} | {classes} | {stats.num_params:,} | "
          f"{stats.flops_per_image / 1e9:.3f} | {_year(name)} |")


if __name__ == "__main__":
  main()
