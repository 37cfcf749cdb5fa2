"""Command line: `python -m vision_jax.viz COMMAND [options]` writes one PNG (`--out`).

Course-notes pictures (no checkpoint needed):
  pixels        an image patch with its pixel values written on it ("images are numbers")
  convolution   convolution by hand, step by step (the notes' 5x5 image and 3x3 filter)
  filters       sharpen / edge detect / strong edge detect on a real image
  max_pool      2x2 max pooling of a 4x4 map
  x_vs_o        trains a tiny CNN on X's, O's and +'s; its filters next to the notes' ones

A trained classifier (`--workdir` of a `vision_jax.main` run; latest checkpoint or `--step`):
  layers        prints the layer names the commands below accept, with shapes
  first_layer   the first convolution's filters
  feature_maps  the most active channels of one layer (`--layer`) for one image
  saliency      input-gradient saliency, |d logit / d pixel|, for some eval images
  gradcam       Grad-CAM on one layer (`--layer`, default the deepest) for some eval images

Examples:
  python -m vision_jax.viz convolution --out conv.png
  python -m vision_jax.viz gradcam --workdir runs/shapes_cnn --indices 0,1,2,3 --out cam.png

Bad input prints one line (`error: ...`, exit status 2); add --traceback to see the traceback.
"""

import argparse

import jax
import numpy as np

from vision_jax import errors, inference
from vision_jax.course import convolution, filters, max_pool, pixels, sample_images, x_vs_o
from vision_jax.viz import activations, attribution, model_pictures


def _pixels(args) -> None:
  image = sample_images.load(args.source, index=args.index)
  pixels.plot_pixels(image, args.out, size=args.size)


def _convolution(args) -> None:
  convolution.plot_convolution_steps(args.out)


def _filters(args) -> None:
  image = sample_images.load(args.source, index=args.index)
  filters.plot_filters(image, args.out, names=tuple(args.filters.split(",")))


def _max_pool(args) -> None:
  max_pool.plot_max_pool(args.out)


def _x_vs_o(args) -> None:
  result = x_vs_o.train(seed=args.seed, steps=args.steps, num_filters=args.num_filters)
  x_vs_o.plot_x_vs_o(result, args.out)
  diagonal = result.similarity[:, [list(x_vs_o.NOTES_FILTERS).index(d) for d in "\\/"]].max()
  print(f"test accuracy {result.accuracy:.4f}; best cosine similarity of a learned filter to a "
        f"diagonal: {diagonal:.2f}")


def _load(args) -> inference.Loaded:
  return inference.load_for_inference(args.workdir, step=args.step, dtype="float32")


def _inputs(args, loaded: inference.Loaded) -> tuple[np.ndarray, list]:
  """uint8 images (B, H, W, C) at the model's input size, and their labels (None for files)."""
  if args.image:
    return inference.read_image(args.image, loaded.image_shape)[None], [None]
  indices = [int(i) for i in args.indices.split(",")]
  images, labels = inference.eval_examples(loaded.config, indices)
  return inference.resize(images, loaded.config), list(labels)


def _class_index(value: str | None, names: tuple[str, ...]) -> int | None:
  if value is None:
    return None
  if value in names:
    return names.index(value)
  if value.isdigit() and int(value) < len(names):
    return int(value)
  raise errors.UserError(
      f"Unknown class {value!r}; valid choices: {list(names)} or 0-{len(names) - 1}")


def _title(loaded: inference.Loaded, what: str) -> str:
  return f"{what}: {loaded.config.model.name} on {loaded.info.name}, step {loaded.step}"


def _layers(args) -> None:
  loaded = _load(args)
  x = np.zeros((1, *loaded.image_shape), np.float32)  # Names and shapes only.
  tr = activations.trace(loaded.model, loaded.variables, x)
  perturbable = set(tr.perturbable_names())
  print("name  shape  (* = also a Grad-CAM layer)")
  for name in tr.spatial_names():
    star = " *" if name in perturbable else ""
    alias = f" (= {tr.aliases[name]})" if name in tr.aliases else ""
    print(f"  {name}  {tuple(tr.get(name).shape[1:])}{alias}{star}")


def _first_layer(args) -> None:
  loaded = _load(args)
  name, kernel = model_pictures.first_conv_kernel(loaded.variables["params"])
  model_pictures.plot_first_layer(kernel, args.out, title=_title(
      loaded, f"First-layer filters ({name}, {kernel.shape[0]}x{kernel.shape[1]})"))


def _feature_maps(args) -> None:
  loaded = _load(args)
  images, _ = _inputs(args, loaded)
  x = loaded.preprocess(images[:1])
  tr = activations.trace(loaded.model, loaded.variables, x)
  if not tr.spatial_names():
    raise errors.UserError(f"{loaded.config.model.name} has no (B, H, W, C) activations to show.")
  layer = args.layer or tr.spatial_names()[0]
  maps = np.asarray(jax.device_get(tr.get(layer)), np.float32)[0]  # (H', W', K)
  model_pictures.plot_feature_maps(images[0], maps, args.out, title=_title(
      loaded, f"Feature maps of {layer} {maps.shape[:2]}, most active channels"))


def _saliency(args) -> None:
  loaded = _load(args)
  images, labels = _inputs(args, loaded)
  maps, classes, _ = attribution.saliency(
      loaded.model, loaded.variables, loaded.preprocess(images),
      _class_index(args.class_, loaded.class_names))
  model_pictures.plot_saliency(images, np.asarray(maps), np.asarray(classes), labels,
                               loaded.class_names, args.out,
                               title=_title(loaded, "Saliency |d logit / d pixel|"))


def _gradcam(args) -> None:
  loaded = _load(args)
  images, labels = _inputs(args, loaded)
  maps, classes, _, layer = attribution.grad_cam(
      loaded.model, loaded.variables, loaded.preprocess(images), args.layer,
      _class_index(args.class_, loaded.class_names))
  model_pictures.plot_gradcam(images, np.asarray(maps), np.asarray(classes), labels,
                              loaded.class_names, args.out,
                              title=_title(loaded, f"Grad-CAM on {layer}"))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m vision_jax.viz", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)

  def command(name, fn, help_text):
    sub = commands.add_parser(name, help=help_text, description=help_text)
    if name != "layers":
      sub.add_argument("--out", default=f"{name}.png", help="output PNG (default: %(default)s)")
    sub.set_defaults(fn=fn)
    return sub

  for name, fn, text in (("pixels", _pixels, "Image patch with its pixel values."),
                         ("filters", _filters, "Classic 3x3 filters on a real image.")):
    sub = command(name, fn, text)
    sub.add_argument("--source", default="photo", choices=sample_images.SOURCES)
    sub.add_argument("--index", type=int, default=0,
                     help="Fashion-MNIST test item, or shapes scene seed")
    if name == "pixels":
      sub.add_argument("--size", type=int, default=12, help="patch size in pixels")
    else:
      sub.add_argument("--filters", default="sharpen,edge detect,strong edge detect",
                       help=f"comma-separated, from {list(filters.CLASSIC_FILTERS)}")
  command("convolution", _convolution, "Convolution by hand, step by step.")
  command("max_pool", _max_pool, "Max pooling of a 4x4 map.")
  sub = command("x_vs_o", _x_vs_o, "Tiny CNN on X's vs O's and +'s, and its filters.")
  sub.add_argument("--seed", type=int, default=0)
  sub.add_argument("--steps", type=int, default=300)
  sub.add_argument("--num_filters", type=int, default=6)

  for name, fn, text in (
      ("layers", _layers, "Print the valid layer names and their shapes."),
      ("first_layer", _first_layer, "First-layer filters of a checkpoint."),
      ("feature_maps", _feature_maps, "Feature maps of one layer for one image."),
      ("saliency", _saliency, "Input-gradient saliency maps."),
      ("gradcam", _gradcam, "Grad-CAM maps on one layer.")):
    sub = command(name, fn, text)
    sub.add_argument("--workdir", required=True, help="a training run's workdir")
    sub.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    if name in ("layers", "first_layer"):
      continue
    sub.add_argument("--indices", default="0,1,2,3" if name in ("saliency", "gradcam") else "0",
                     help="comma-separated eval-split examples (default: %(default)s)")
    sub.add_argument("--image", default=None, help="an image file instead of eval examples")
    if name in ("feature_maps", "gradcam"):
      sub.add_argument("--layer", default=None, help=(
          "a stage of the model's features dict or a module output 'path/__call__'; the "
          "`layers` command lists them (default: the first stage for feature_maps, the deepest "
          "module output for gradcam)"))
    if name in ("saliency", "gradcam"):
      sub.add_argument("--class", dest="class_", default=None,
                       help="class name or index to explain (default: the predicted one)")
  return parser


def main(argv: list[str] | None = None) -> str | None:
  """Runs one command; returns the PNG path it wrote (None for `layers`)."""
  args = _parser().parse_args(argv)
  args.fn(args)
  if args.command == "layers":
    return None
  print(f"wrote {args.out}")
  return args.out


if __name__ == "__main__":
  errors.run_argparse(main)  # Bad input: one line (`--traceback` for the traceback).
