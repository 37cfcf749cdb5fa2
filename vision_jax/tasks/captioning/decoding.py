"""Greedy and beam-search decoding with static shapes: jit-compilable, batched, deterministic.

The searches are generic over a step function

    step_fn(carry, tokens (N,)) -> (carry, logits (N, V), aux)

that feeds the previous token of N sequences and returns next-token logits (any model, or a
toy table in tests): `greedy_search` and `beam_search`. `greedy_decode` and `beam_decode`
bind them to a `Captioner`.

Outputs are (B, L) ids of the generated tokens after <bos>: the words, <eos> (unless the
length ran out first), then `pad_id`.

Beam search keeps `beam_size` hypotheses per image. A hypothesis that emits <eos> is finished
and frozen: it stays in its slot with its score, extended only by padding at no cost, and
competes with the live ones for the slots. Hypotheses are ranked by the GNMT length-normalised
score (Wu et al. 2016) log p(Y) / lp(|Y|), lp(n) = ((5 + n) / 6)^alpha, |Y| counting <eos>.
alpha = 0 ranks by log-probability; larger alpha favours longer captions. Ranking live
hypotheses (all of one length) by this score orders them as log p does, so a beam of one
follows the greedy path exactly, for any alpha.

To compile a whole decode once, bind the static arguments:

    decode = jax.jit(functools.partial(
        beam_decode, model=model, bos_id=1, eos_id=2, max_length=20, beam_size=3))
    tokens, scores = decode(variables, images=images)
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jax.Array], tuple[Any, jax.Array, dict]]


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's lp(n) = ((5 + n) / 6)^alpha; 1 for alpha = 0."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def greedy_search(step_fn: StepFn, carry: Any, batch_size: int, *, bos_id: int, eos_id: int,
                  max_length: int, pad_id: int = 0) -> tuple[jax.Array, jax.Array, dict]:
  """Takes the most likely token at every step.

  Args:
    step_fn: See the module docstring; called on batch_size sequences.
    carry: The step function's initial carry.
    batch_size: Number of sequences B.
    bos_id: First input token.
    eos_id: Ends a sequence; later positions are `pad_id`.
    max_length: Number of steps L.
    pad_id: Fills positions after <eos>.

  Returns:
    `(tokens, log_probs, aux)`: (B, L) int32 ids, (B,) float32 log-probability of each
    sequence up to and including its <eos>, and the step function's aux stacked over steps,
    (B, L, ...) (e.g. attention maps; after <eos> they describe padding, ignore them).
  """

  def body(state, _):
    carry, prev, done, log_prob = state
    carry, logits, aux = step_fn(carry, prev)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, V)
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # (B,)
    picked = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    log_prob = log_prob + jnp.where(done, 0.0, picked)
    token = jnp.where(done, pad_id, token)
    done = done | (token == eos_id)
    return (carry, token, done, log_prob), (token, aux)

  init = (carry, jnp.full((batch_size,), bos_id, jnp.int32), jnp.zeros((batch_size,), bool),
          jnp.zeros((batch_size,), jnp.float32))
  (_, _, _, log_prob), (tokens, aux) = jax.lax.scan(body, init, length=max_length)
  time_second = lambda x: jnp.moveaxis(x, 0, 1)  # noqa: E731  (L, B, ...) -> (B, L, ...)
  return time_second(tokens), log_prob, jax.tree.map(time_second, aux)


def beam_search(step_fn: StepFn, carry: Any, batch_size: int, *, beam_size: int,
                bos_id: int, eos_id: int, max_length: int, alpha: float = 0.0,
                pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """Beam search; stops early once every hypothesis of every image has finished.

  Args:
    step_fn: See the module docstring; called on batch_size * beam_size sequences, image b's
      beams at rows b * beam_size ... (b + 1) * beam_size - 1.
    carry: Initial carry for batch_size * beam_size sequences in that order (e.g. each
      image's carry repeated with `jnp.repeat(x, beam_size, axis=0)`).
    batch_size: Number of images B.
    beam_size: Hypotheses kept per image K; needs K <= vocabulary size.
    bos_id: First input token.
    eos_id: Finishes a hypothesis.
    max_length: Most tokens generated L; hypotheses without <eos> by then are scored as they
      are, with |Y| = L.
    alpha: Length-penalty exponent.
    pad_id: Fills positions after <eos>.

  Returns:
    `(tokens, scores)`: the best hypothesis of each image, (B, L) int32, and its normalised
    score log p / lp(|Y|), (B,) float32.
  """
  b, k = batch_size, beam_size
  gather = lambda x, beam: jnp.take_along_axis(  # noqa: E731  per image, pick beams (B, K)
      x, beam.reshape(beam.shape + (1,) * (x.ndim - 2)), axis=1)

  def cond(state):
    t, _, _, _, done, _ = state
    return (t < max_length) & ~jnp.all(done)

  def body(state):
    t, carry, seqs, log_p, done, lengths = state
    last = jnp.where(t == 0, bos_id, seqs[:, :, jnp.maximum(t - 1, 0)])  # (B, K)
    carry, logits, _ = step_fn(carry, last.reshape(b * k))
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab = log_probs.shape[-1]
    log_probs = log_probs.reshape(b, k, vocab)  # (B, K, V)
    # A finished hypothesis has one continuation, padding, at no cost.
    frozen = jnp.full((vocab,), -jnp.inf).at[pad_id].set(0.0)
    log_probs = jnp.where(done[..., None], frozen, log_probs)
    cand = log_p[..., None] + log_probs  # (B, K, V)
    cand_len = jnp.where(done, lengths, t + 1)  # (B, K)
    rank = cand / length_penalty(cand_len, alpha)[..., None]
    _, idx = jax.lax.top_k(rank.reshape(b, k * vocab), k)  # (B, K), best first
    beam, token = idx // vocab, (idx % vocab).astype(jnp.int32)

    was_done = gather(done, beam)
    token = jnp.where(was_done, pad_id, token)
    seqs = gather(seqs, beam).at[:, :, t].set(token)  # (B, K, L)
    log_p = jnp.take_along_axis(cand.reshape(b, k * vocab), idx, axis=1)
    lengths = jnp.where(was_done, gather(lengths, beam), t + 1)
    done = was_done | (token == eos_id)
    flat = (beam + k * jnp.arange(b)[:, None]).reshape(b * k)  # rows of the (B*K, ...) carry
    carry = jax.tree.map(lambda x: x[flat], carry)
    return t + 1, carry, seqs, log_p, done, lengths

  # Only beam 0 starts alive, so the first step does not pick K copies of one token.
  log_p = jnp.tile(jnp.array([0.0] + [-jnp.inf] * (k - 1), jnp.float32), (b, 1))  # (B, K)
  init = (jnp.int32(0), carry, jnp.full((b, k, max_length), pad_id, jnp.int32), log_p,
          jnp.zeros((b, k), bool), jnp.zeros((b, k), jnp.int32))
  _, _, seqs, log_p, _, lengths = jax.lax.while_loop(cond, body, init)
  scores = log_p / length_penalty(lengths, alpha)  # (B, K)
  best = jnp.argmax(scores, axis=1)  # (B,)
  return (jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0],
          jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0])


def _model_step(variables: Any, model: nn.Module, encoded: Any) -> StepFn:
  """A step function that runs `model.decode_step` with fixed encoder outputs."""

  def step(carry, tokens):
    return model.apply(variables, carry, tokens, encoded, method=model.decode_step)

  return step


def greedy_decode(variables: Any, model: nn.Module, images: jax.Array, bos_id: int,
                  eos_id: int, max_length: int,
                  pad_id: int = 0) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Greedy captions of a batch of images.

  Args:
    variables: The model's variables (params, and batch_stats if the backbone has them).
    model: A `Captioner` (or any module with its `encode` / `decode_step` methods).
    images: (B, H, W, C) images.
    bos_id, eos_id, max_length, pad_id: See `greedy_search`.

  Returns:
    `(tokens, log_probs, attention)`: (B, L) ids, (B,) sequence log-probabilities, and the
    attention maps (B, L, N) if the model attends, else None.
  """
  carry, encoded = model.apply(variables, images, train=False, method=model.encode)
  tokens, log_probs, aux = greedy_search(
      _model_step(variables, model, encoded), carry, images.shape[0], bos_id=bos_id,
      eos_id=eos_id, max_length=max_length, pad_id=pad_id)
  return tokens, log_probs, aux.get("attention")


def beam_decode(variables: Any, model: nn.Module, images: jax.Array, bos_id: int, eos_id: int,
                max_length: int, beam_size: int = 3, alpha: float = 0.0,
                pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """Beam-search captions of a batch of images.

  Args:
    variables: The model's variables.
    model: A `Captioner`.
    images: (B, H, W, C) images.
    bos_id, eos_id, max_length, beam_size, alpha, pad_id: See `beam_search`.

  Returns:
    `(tokens, scores)`: (B, L) ids of the best hypothesis and its normalised score (B,).
  """
  carry, encoded = model.apply(variables, images, train=False, method=model.encode)
  # Each image's beams sit next to each other: row b * K + j is beam j of image b.
  carry, encoded = jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), (carry, encoded))
  return beam_search(
      _model_step(variables, model, encoded), carry, images.shape[0], beam_size=beam_size,
      bos_id=bos_id, eos_id=eos_id, max_length=max_length, alpha=alpha, pad_id=pad_id)
