"""Test accuracy against wall-clock time of one or more training runs, as a picture and a table.

    python experiments/accuracy_vs_time.py runs/fmnist_cpu --target=0.94 --out=docs/fmnist_cpu.png

The times are those TensorBoard recorded with each eval (`WORKDIR/tensorboard`), counted from
the run's first event (the start of training: start-up and the first compilation come before
it), so the picture shows what a user waits for. A resumed run's events carry on.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

from vision_jax import errors  # noqa: E402


def eval_accuracy_over_time(workdir: str, tag: str = "eval/accuracy") -> list[tuple[float, int,
                                                                                   float]]:
  """`(seconds since the run's first event, step, value)` of every `tag` scalar."""
  path = os.path.join(workdir, "tensorboard")
  if not os.path.isdir(path):
    raise errors.MissingFileError(f"{path} does not exist: is {workdir!r} a training workdir?")
  events = event_accumulator.EventAccumulator(path, size_guidance={"scalars": 0}).Reload()
  if tag not in events.Tags()["scalars"]:
    raise errors.UserError(f"{workdir!r} has no {tag!r} scalars; it has "
                           f"{sorted(events.Tags()['scalars'])}.")
  first = min(e.wall_time for t in events.Tags()["scalars"] for e in events.Scalars(t))
  return [(e.wall_time - first, e.step, e.value) for e in events.Scalars(tag)]


def main(argv: list[str]) -> str:
  parser = argparse.ArgumentParser(prog="experiments/accuracy_vs_time.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--tag", default="eval/accuracy")
  parser.add_argument("--target", type=float, default=None, help="a horizontal line, e.g. 0.94")
  parser.add_argument("--out", default="accuracy_vs_time.png")
  args = parser.parse_args(argv)
  fig, ax = plt.subplots(figsize=(6, 4))
  for workdir in args.workdirs:
    points = eval_accuracy_over_time(workdir, args.tag)
    print(f"{workdir}:\n| minutes | step | {args.tag} |\n|---:|---:|---:|")
    for seconds, step, value in points:
      print(f"| {seconds / 60:.2f} | {step} | {value:.4f} |")
    ax.plot([s / 60 for s, _, _ in points], [v for _, _, v in points], "o-",
            label=os.path.basename(os.path.normpath(workdir)))
  if args.target is not None:
    ax.axhline(args.target, color="gray", linestyle="--", label=f"{args.target:g}")
  ax.set_xlabel("wall-clock minutes of training")
  ax.set_ylabel(args.tag)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")
  return args.out


if __name__ == "__main__":
  errors.run_argparse(main)
