"""Numeric precision of a run: `config.model.dtype` → the models' `dtype` and `param_dtype`.

- `float32`: compute and parameters in float32 (the default).
- `bfloat16`: mixed precision: compute in bfloat16, parameters (and the optimiser) in float32.
- `float64`: compute and parameters in float64. Slow, and needs JAX's 64-bit mode
  (`JAX_ENABLE_X64=1`, or `jax.config.update("jax_enable_x64", True)` before any array is made);
  for checking that two computations agree to the last digits maths allows (e.g. 2 processes ×
  4 devices against 1 × 8), where float32 rounding would hide small mistakes or flag none.

Models take float32 images from the input pipeline and cast them to `dtype` in their first
layer; their outputs (logits, box deltas) are `output_dtype(dtype)`, at least float32, so that
softmax and the losses never run in bfloat16 and keep float64 in float64 mode.
"""

from typing import Any

import jax
import jax.numpy as jnp

from vision_jax import errors


def dtypes(name: str) -> dict[str, Any]:
  """`{"dtype": ..., "param_dtype": ...}` for `config.model.dtype` = `name`.

  Raises:
    errors.UserError: for "float64" while JAX's 64-bit mode is off (JAX would silently compute in
      float32 instead).
  """
  if name == "float64":
    if not jax.config.jax_enable_x64:
      raise errors.UserError(
          'config.model.dtype="float64" needs JAX\'s 64-bit mode, or JAX silently computes in '
          "float32: set JAX_ENABLE_X64=1 in the environment (or call "
          'jax.config.update("jax_enable_x64", True) before anything else).')
    return {"dtype": jnp.float64, "param_dtype": jnp.float64}
  return {"dtype": jnp.dtype(name), "param_dtype": jnp.float32}


def output_dtype(dtype: Any) -> jnp.dtype:
  """The dtype of a model's outputs for compute `dtype`: float32, or float64 in float64 mode."""
  return jnp.promote_types(dtype, jnp.float32)


def float32_statistics(dtype: Any) -> bool:
  """flax normalisation's `force_float32_reductions` for compute `dtype`.

  True (statistics and BatchNorm's running averages in float32, also under bfloat16), except
  in float64 mode, where it would keep the running averages in float32.
  """
  return jnp.dtype(dtype) != jnp.float64
