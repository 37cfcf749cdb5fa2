"""Classification metrics: top-1 / top-5 accuracy and error, exact over padded eval batches.

Eval steps return sums (not means) so batches, devices and hosts add up exactly; `finalize`
divides once at the end.
"""

import jax
import jax.numpy as jnp
import numpy as np


def topk_hits(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k highest logits. logits: (B, K), labels: (B,) → (B,)."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)  # (B, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def weighted_sums(logits: jax.Array, labels: jax.Array, loss: jax.Array,
                  weight: jax.Array) -> dict:
  """Sums over the batch, counting only examples with weight 1 (padding has weight 0)."""
  return {
      "count": weight.sum(),
      "loss": (loss * weight).sum(),
      "top1": (topk_hits(logits, labels, 1) * weight).sum(),
      "top5": (topk_hits(logits, labels, 5) * weight).sum(),
  }


def finalize(sums: dict) -> dict:
  """Turns accumulated sums into the reported metrics (accuracies, ILSVRC-style errors)."""
  sums = {k: float(np.asarray(v)) for k, v in sums.items()}
  count = max(sums["count"], 1.0)
  top1, top5 = sums["top1"] / count, sums["top5"] / count
  return {"loss": sums["loss"] / count, "accuracy": top1, "top5_accuracy": top5,
          "top1_error": 1.0 - top1, "top5_error": 1.0 - top5, "num_examples": int(sums["count"])}
