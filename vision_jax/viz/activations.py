"""Named activations of any registry model, and a way to nudge one of them (for gradients).

Two kinds of names:
  stage               a key of the `features` dict every model returns (`conv1`, `stage3`, ...):
                      the activations the model itself exposes, e.g. after ReLU and pooling.
  path/__call__       the output of one submodule (`conv2/__call__`, `stage3_block3/__call__`),
                      flax's own naming in the `intermediates` collection.

Module outputs are recorded with `nn.intercept_methods`, which sees every submodule call
without any change to the model. The same mechanism adds a perturbation to one module's output
(`perturbed_apply`): the gradient with respect to that perturbation, at zero, is the gradient
with respect to the activation. That is how Grad-CAM gets its gradients, so it works on module
outputs, and on the stages that *are* a module's output (for example ResNet's `stage3` is the
output of `stage3_block3`); a stage computed by plain functions after the last module (SimpleCNN's
`conv2` is max_pool(relu(Conv(x)))) has no such handle, and its module output is used instead.
"""

import collections
import dataclasses

import flax.linen as nn
import jax

from vision_jax import errors

CALL = "__call__"


def _name(context) -> str:
  return "/".join(context.module.path + (context.method_name,))


@dataclasses.dataclass
class Trace:
  """One forward pass, with everything it computed by name.

  Attributes:
    logits: (B, num_classes).
    features: the model's `features` dict, stage -> activation.
    modules: "path/__call__" -> output, for every submodule called exactly once whose output is
      one array, in the order the calls finished (the last one is the deepest).
    aliases: stage -> "path/__call__" of the module whose output the stage is (same array).
  """
  logits: jax.Array
  features: dict
  modules: dict
  aliases: dict

  def spatial_names(self) -> list[str]:
    """Names of (B, H, W, C) activations: stages, then module outputs, in call order."""
    stages = [k for k, v in self.features.items() if getattr(v, "ndim", 0) == 4]
    return stages + [k for k, v in self.modules.items() if v.ndim == 4]

  def perturbable_names(self) -> list[str]:
    """Names `perturbed_apply` accepts for (B, H, W, C) activations (module outputs, aliases)."""
    spatial = [k for k, v in self.modules.items() if v.ndim == 4]
    return [s for s, m in self.aliases.items() if m in spatial] + spatial

  def get(self, name: str, valid: list[str] | None = None) -> jax.Array:
    """The activation called `name`; a UserError lists the valid names if it is unknown.

    Args:
      name: a stage or a "path/__call__".
      valid: the names to accept (default: all spatial ones).
    """
    valid = self.spatial_names() if valid is None else valid
    if name not in valid:
      raise errors.UserError(f"Unknown or unsuitable layer {name!r}; valid choices: {valid}")
    return self.features[name] if name in self.features else self.modules[name]


def trace(model: nn.Module, variables: dict, images: jax.Array) -> Trace:
  """Runs the model in eval mode, recording every submodule's output.

  Args:
    model: a registry model (`__call__(x, train) -> (logits, features)`).
    variables: its `{"params", "batch_stats"}`.
    images: (B, H, W, C) preprocessed.
  """
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == CALL and context.module.path:  # Not the model itself.
      calls.append((_name(context), out))
    return out

  with nn.intercept_methods(record):
    logits, features = model.apply(variables, images, train=False)
  counts = collections.Counter(name for name, _ in calls)
  modules = {name: out for name, out in calls
             if counts[name] == 1 and isinstance(out, jax.Array)}
  # The same Python object: the stage is exactly that module's output.
  aliases = {stage: name for stage, value in features.items()
             for name, out in modules.items() if out is value}
  return Trace(logits=logits, features=features, modules=modules, aliases=aliases)


def perturbed_apply(model: nn.Module, variables: dict, images: jax.Array, name: str,
                    delta: jax.Array) -> jax.Array:
  """The model's logits with `delta` added to one module's output (`name`, as `trace` names it).

  Differentiating with respect to `delta` at zero gives d logits / d activation.
  """
  def perturb(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == CALL and context.module.path and _name(context) == name:
      out = out + delta
    return out

  with nn.intercept_methods(perturb):
    logits, _ = model.apply(variables, images, train=False)
  return logits
