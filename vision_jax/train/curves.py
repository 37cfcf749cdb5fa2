"""Training curves (loss and a task metric against step) as a PNG, from `metrics.jsonl` records."""

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(records: list[dict], path: str, title: str = "",
                         metrics: tuple[str, str] = ("loss", "accuracy")) -> str:
  """Plots two metrics (train and eval) side by side and saves them to `path`.

  Args:
    records: dicts with `step`, `split` ("train"/"eval") and metric values.
    path: output PNG file.
    title: figure title (e.g. the experiment name).
    metrics: the two record keys to plot.

  Returns:
    `path`.
  """
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, metric in zip(axes, metrics):
    for split, style in (("train", "-"), ("eval", "o-")):
      points = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
