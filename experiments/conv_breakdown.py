"""Where a CPU train step's time goes: every convolution of a model, 3 passes, JAX vs PyTorch.

    python experiments/conv_breakdown.py --model=resnet20 --batch_size=128 --image_size=32

A convolution layer costs three convolutions per train step: the forward pass, the gradient
with respect to its input (backward-data) and the gradient with respect to its kernel
(backward-filter). This times each of the three alone, for every distinct convolution shape of
the model (read from the model itself: `nn.Conv` calls recorded with `nn.intercept_methods`),
with XLA (`lax.conv_general_dilated` and its VJPs, each jitted on its own, NHWC/HWIO as the
models use) and with PyTorch (`F.conv2d` and `torch.nn.grad.conv2d_input/conv2d_weight`,
channels_last, as many threads as JAX's CPU has cores) on the same shapes, one after the other.
Weighted by how often each shape occurs, the totals say how much of the step's time is
convolutions, and which pass makes the difference. Prints a Markdown table; `--json_out` too.
"""

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import errors, models


def conv_shapes(model_name: str, batch: int, size: int, channels: int) -> list[dict]:
  """Every `nn.Conv` call of the model's forward pass: input shape, kernel, strides, padding."""
  model = models.get_model(model_name, num_classes=10)
  calls = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Conv) and context.method_name == "__call__":
      x = args[0]
      ks = tuple(module.kernel_size)
      strides = module.strides or 1
      strides = (strides,) * len(ks) if isinstance(strides, int) else tuple(strides)
      padding = module.padding
      if isinstance(padding, str):
        padding = padding.upper()
        if padding == "SAME" and strides == (1,) * len(ks) and all(k % 2 for k in ks):
          padding = tuple((k // 2, k // 2) for k in ks)  # The same, written out.
      else:
        padding = tuple(tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in padding)
      calls.append({"input": tuple(x.shape), "kernel": (*ks, x.shape[-1], module.features),
                    "strides": strides, "padding": padding})
    return next_fun(*args, **kwargs)

  images = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  distinct = {}
  for call in calls:
    key = json.dumps(call, sort_keys=True, default=list)
    distinct.setdefault(key, {**call, "count": 0})["count"] += 1
  return list(distinct.values())


def _median_ms(fn, repeats: int) -> float:
  fn()  # Compile / warm up.
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def time_jax(shape: dict, repeats: int) -> dict:
  """Forward, backward-data and backward-filter of one convolution with XLA, in ms."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape["input"]), jnp.float32)
  w = jnp.asarray(rng.standard_normal(shape["kernel"]) * 0.1, jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, shape["strides"], shape["padding"], dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = conv(x, w)
  dy = jnp.ones_like(y)
  forward = jax.jit(conv)
  data = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  kernel = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  return {"forward": _median_ms(lambda: forward(x, w).block_until_ready(), repeats),
          "grad_input": _median_ms(lambda: data(x, w, dy).block_until_ready(), repeats),
          "grad_kernel": _median_ms(lambda: kernel(x, w, dy).block_until_ready(), repeats)}


def time_torch(shape: dict, repeats: int) -> dict | None:
  """The same three passes with PyTorch (channels_last), in ms; None without torch."""
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return None
  n, h, w_, c = shape["input"]
  kh, kw, cin, cout = shape["kernel"]
  if isinstance(shape["padding"], str):
    return None  # Our models pad explicitly; "SAME"/"VALID" convs are not compared.
  (pt, pb), (pl, pr) = shape["padding"]
  if pt != pb or pl != pr:
    return None
  padding = (pt, pl)
  cl = torch.channels_last
  x = torch.randn(n, c, h, w_).to(memory_format=cl)
  weight = (torch.randn(cout, cin, kh, kw) * 0.1).to(memory_format=cl)
  stride = tuple(shape["strides"])
  y = F.conv2d(x, weight, stride=stride, padding=padding)
  dy = torch.ones_like(y).to(memory_format=cl)
  with torch.no_grad():
    return {
        "forward": _median_ms(lambda: F.conv2d(x, weight, stride=stride, padding=padding),
                              repeats),
        "grad_input": _median_ms(lambda: torch.nn.grad.conv2d_input(
            x.shape, weight, dy, stride=stride, padding=padding), repeats),
        "grad_kernel": _median_ms(lambda: torch.nn.grad.conv2d_weight(
            x, weight.shape, dy, stride=stride, padding=padding), repeats)}


PASSES = ("forward", "grad_input", "grad_kernel")


def time_kernel_grad_variants(shape: dict, repeats: int) -> dict:
  """The kernel gradient of a stride-1 convolution three ways, in ms: XLA's convolution, nine
  shifted matmuls (one per kernel tap), and `conv_general_dilated_patches` + one matmul."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape["input"]), jnp.float32)
  kh, kw, cin, cout = shape["kernel"]
  w = jnp.zeros(shape["kernel"], jnp.float32)
  padding = shape["padding"]
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dy = jnp.ones_like(conv(x, w))  # (B, H, W, O)
  h, w_ = dy.shape[1:3]

  def shifted(x, dy):
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    taps = [jnp.einsum("bhwc,bhwo->co", xp[:, i:i + h, j:j + w_], dy)
            for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout)

  def patches(x, dy):
    p = jax.lax.conv_general_dilated_patches(  # (B, H, W, C * kh * kw), channel-major
        x, (kh, kw), (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.einsum("bhwk,bhwo->ko", p, dy).reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)

  variants = {"xla": jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
              "shifted_matmuls": jax.jit(shifted), "patches_matmul": jax.jit(patches)}
  reference = variants["xla"](x, dy)
  for name, fn in variants.items():  # The same numbers, to float32 rounding.
    np.testing.assert_allclose(fn(x, dy), reference, rtol=1e-3, atol=1e-3 * float(
        jnp.abs(reference).max()))
  return {name: _median_ms(lambda fn=fn: fn(x, dy).block_until_ready(), repeats)
          for name, fn in variants.items()}


def table(rows: list[dict], totals: dict, header: str) -> str:
  """The Markdown table of per-shape times and count-weighted totals."""
  lines = [header, "",
           "| input (B, H, W, C) | kernel | stride | count | " +
           " | ".join(f"JAX {p} ms | torch {p} ms" for p in PASSES) + " |",
           "|---|---|---|---:|" + "---:|---:|" * len(PASSES)]
  for r in rows:
    cells = []
    for p in PASSES:
      cells.append(f"{r['jax'][p]:.2f}")
      cells.append("" if r["torch"] is None else f"{r['torch'][p]:.2f}")
    lines.append(f"| {r['input']} | {'x'.join(map(str, r['kernel']))} | {r['strides'][0]} | "
                 f"{r['count']} | " + " | ".join(cells) + " |")
  cells = []
  for p in PASSES:
    cells.append(f"**{totals['jax'][p]:.1f}**")
    cells.append(f"**{totals['torch'][p]:.1f}**" if totals["torch"] else "")
  lines.append("| **total per step** (× count) | | | | " + " | ".join(cells) + " |")
  jax_total = sum(totals["jax"].values())
  line = f"\nAll convolution passes of one train step: JAX {jax_total:.0f} ms"
  if totals["torch"]:
    torch_total = sum(totals["torch"].values())
    line += (f", PyTorch {torch_total:.0f} ms ({jax_total / torch_total:.2f}×); per pass "
             + ", ".join(f"{p} {totals['jax'][p] / totals['torch'][p]:.2f}×" for p in PASSES))
  return "\n".join(lines) + line + "."


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="experiments/conv_breakdown.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--kernel_grad_variants", action="store_true",
                      help="Also time the kernel gradient of each stride-1 convolution written "
                      "as shifted matmuls and as patches + matmul.")
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args(argv)
  if not args.skip_torch:
    try:
      import torch
      torch.set_num_threads(os.cpu_count() if jax.default_backend() == "cpu" else 1)
    except ImportError:
      args.skip_torch = True
  rows = conv_shapes(args.model, args.batch_size, args.image_size, args.channels)
  # PyTorch first: once XLA has run, its CPU thread pool keeps spinning for a while and would
  # slow PyTorch's threads down (seen: small convolutions 50x slower).
  for row in rows:
    row["torch"] = None if args.skip_torch else time_torch(row, args.repeats)
  for row in rows:
    row["jax"] = time_jax(row, args.repeats)
  totals = {"jax": {p: sum(r["jax"][p] * r["count"] for r in rows) for p in PASSES},
            "torch": None}
  if not args.skip_torch and all(r["torch"] for r in rows):
    totals["torch"] = {p: sum(r["torch"][p] * r["count"] for r in rows) for p in PASSES}
  header = (f"{args.model}, batch {args.batch_size}, {args.image_size}x{args.image_size}x"
            f"{args.channels}, float32, median of {args.repeats}; {jax.devices()[0].platform}, "
            f"{os.cpu_count()} threads")
  print(table(rows, totals, header))
  result = {"header": header, "rows": rows, "totals": totals}
  if args.kernel_grad_variants:
    lines = ["", "Kernel gradient of each stride-1 convolution, written three ways (ms):", "",
             "| input (B, H, W, C) | kernel | XLA convolution | 9 shifted matmuls | patches + "
             "matmul |", "|---|---|---:|---:|---:|"]
    for row in rows:
      if tuple(row["strides"]) != (1, 1) or isinstance(row["padding"], str):
        continue
      row["kernel_grad_variants"] = v = time_kernel_grad_variants(row, args.repeats)
      lines.append(f"| {row['input']} | {'x'.join(map(str, row['kernel']))} | {v['xla']:.2f} | "
                   f"{v['shifted_matmuls']:.2f} | {v['patches_matmul']:.2f} |")
    print("\n".join(lines))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=1, default=list)
  return result


if __name__ == "__main__":
  errors.run_argparse(main)
