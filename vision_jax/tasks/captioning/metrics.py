"""Captioning metrics: corpus BLEU-1..4, CIDEr-D and perplexity, in plain Python.

Captions are compared as word lists from `vision_jax.tasks.captioning.vocabulary.split_words` (lowercase,
punctuation stripped), so generated captions and raw reference strings meet on equal terms.
Each image has one candidate and one or more references.

- BLEU (Papineni et al. 2002): n-gram precisions clipped by the largest count in any one
  reference, summed over the whole corpus before dividing, combined by a geometric mean and
  multiplied by the brevity penalty exp(1 - r / c) when the candidates are shorter in total (c)
  than the references closest in length to each candidate (r; ties go to the shorter one).
  A zero precision makes the score 0 (no smoothing).
- CIDEr-D (Vedantam et al. 2015), as in the coco-caption code (`pycocoevalcap/cider`): each
  caption becomes TF-IDF vectors of its 1..4-grams, with document frequencies counted over the
  reference sets of the evaluated images; per n, the cosine similarity with each reference, with
  the candidate's weights clipped at the reference's and a Gaussian penalty on the length
  difference (sigma 6); the mean over n and over references, times 10, averaged over images.
  It is therefore relative to the evaluated corpus: the same caption scores differently in
  another set of images.
"""

import collections
import math
from collections.abc import Sequence

from vision_jax.tasks.captioning.vocabulary import split_words

NGramCounts = collections.Counter  # n-gram tuple -> count


def ngram_counts(words: Sequence[str], n: int) -> NGramCounts:
  """Counts of the n-grams (tuples of n words) of `words`."""
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _closest_length(length: int, ref_lengths: Sequence[int]) -> int:
  """The reference length closest to `length`, the shorter one on a tie (as coco-caption)."""
  return min(ref_lengths, key=lambda r: (abs(r - length), r))


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]],
         max_order: int = 4) -> dict[str, float]:
  """Corpus BLEU-1 .. BLEU-`max_order`.

  Args:
    candidates: One generated caption per image.
    references: The reference captions of each image (at least one each).
    max_order: Highest n-gram order.

  Returns:
    {"bleu1": ..., "bleu4": ...}, each in [0, 1].
  """
  _check(candidates, references)
  matches, totals = [0] * max_order, [0] * max_order
  cand_length = ref_length = 0
  for cand, refs in zip(candidates, references):
    words = split_words(cand)
    ref_words = [split_words(r) for r in refs]
    cand_length += len(words)
    ref_length += _closest_length(len(words), [len(r) for r in ref_words])
    for n in range(1, max_order + 1):
      counts = ngram_counts(words, n)
      max_ref = collections.Counter()  # Clip each n-gram at its largest count in one reference.
      for r in ref_words:
        max_ref |= ngram_counts(r, n)
      matches[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
      totals[n - 1] += max(len(words) - n + 1, 0)

  if cand_length == 0:
    brevity = 0.0
  else:
    brevity = 1.0 if cand_length > ref_length else math.exp(1 - ref_length / cand_length)
  scores, log_sum = {}, 0.0
  for n in range(1, max_order + 1):
    if log_sum > -math.inf and matches[n - 1] > 0:
      log_sum += math.log(matches[n - 1] / totals[n - 1])
    else:
      log_sum = -math.inf
    scores[f"bleu{n}"] = brevity * math.exp(log_sum / n) if log_sum > -math.inf else 0.0
  return scores


def _tfidf(words: Sequence[str], doc_freq: NGramCounts, log_num_docs: float,
           max_order: int) -> tuple[list[dict], list[float]]:
  """Per order n: {n-gram: tf * idf} and the vector's L2 norm.

  idf = log(num_docs) - log(max(1, df)): n-grams absent from every reference set get the
  largest weight, as in coco-caption.
  """
  vectors, norms = [], []
  for n in range(1, max_order + 1):
    vec = {g: c * (log_num_docs - math.log(max(1.0, doc_freq[g])))
           for g, c in ngram_counts(words, n).items()}
    vectors.append(vec)
    norms.append(math.sqrt(sum(v * v for v in vec.values())))
  return vectors, norms


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]],
            max_order: int = 4, sigma: float = 6.0) -> float:
  """CIDEr-D of the corpus (the mean of `cider_d_per_image`)."""
  scores = cider_d_per_image(candidates, references, max_order, sigma)
  return sum(scores) / len(scores)


def cider_d_per_image(candidates: Sequence[str], references: Sequence[Sequence[str]],
                      max_order: int = 4, sigma: float = 6.0) -> list[float]:
  """CIDEr-D of each image; document frequencies come from all of `references`.

  Args:
    candidates: One generated caption per image.
    references: The reference captions of each image (at least one each).
    max_order: Highest n-gram order.
    sigma: Width of the Gaussian length penalty, in words.

  Returns:
    One score per image, 0 (nothing in common) to 10 (identical to every reference, which
    happens only when all of an image's references are the same and its n-grams are not in
    every image's references).
  """
  _check(candidates, references)
  cand_words = [split_words(c) for c in candidates]
  ref_words = [[split_words(r) for r in refs] for refs in references]
  doc_freq = collections.Counter()  # n-gram -> number of images whose references contain it
  for refs in ref_words:
    doc_freq.update({g for r in refs for n in range(1, max_order + 1) for g in ngram_counts(r, n)})
  log_num_docs = math.log(len(references))

  scores = []
  for words, refs in zip(cand_words, ref_words):
    vec, norm = _tfidf(words, doc_freq, log_num_docs, max_order)
    total = 0.0
    for r in refs:
      ref_vec, ref_norm = _tfidf(r, doc_freq, log_num_docs, max_order)
      penalty = math.exp(-((len(words) - len(r)) ** 2) / (2 * sigma ** 2))
      for n in range(max_order):
        if norm[n] == 0 or ref_norm[n] == 0:
          continue
        # The "-D" clipping: a candidate repeating an n-gram gains nothing past the reference.
        dot = sum(min(v, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0)
                  for g, v in vec[n].items())
        total += penalty * dot / (norm[n] * ref_norm[n])
    scores.append(10.0 * total / (max_order * len(refs)))
  return scores


def perplexity(nll_sum: float, token_count: float) -> float:
  """exp(mean negative log-likelihood per token), from sums accumulated over the eval set."""
  return math.exp(nll_sum / max(token_count, 1.0))


def _check(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
  if len(candidates) != len(references) or not candidates:
    raise ValueError(
        f"Need one candidate per image and at least one image; got {len(candidates)} "
        f"candidates and {len(references)} reference sets")
  if any(isinstance(refs, str) or not refs for refs in references):
    raise ValueError("Each image needs a sequence of reference captions (not a bare string)")
