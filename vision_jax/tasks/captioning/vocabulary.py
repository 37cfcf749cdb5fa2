"""A word-level caption vocabulary: build from training captions, encode, decode, save, load.

Captions are lowercased and split into words by `split_words` (punctuation dropped), the same way
for training captions, generated captions and the references that metrics compare them with.
Ids 0..3 are the special tokens; `<pad>` is 0 so that zero-filled arrays are padding.
"""

import collections
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # Their ids are their positions.

# Letters and digits, with inner apostrophes kept ("don't" stays one word).
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def split_words(text: str) -> list[str]:
  """Lowercases `text` and returns its words, punctuation dropped: "A red, cat." -> a red cat."""
  return _WORD.findall(text.lower())


class Vocabulary:
  """Maps words to int ids and back.

  Attributes:
    words: The word of each id: the special tokens first, then the vocabulary, most frequent
      first (ties alphabetically, so a vocabulary is a deterministic function of its captions).
    min_count: The threshold it was built with (kept for the record in the saved JSON).
  """

  def __init__(self, words: Sequence[str], min_count: int = 1):
    if tuple(words[:len(SPECIALS)]) != SPECIALS:
      raise ValueError(f"The first words must be {SPECIALS}, got {tuple(words[:len(SPECIALS)])}")
    if len(set(words)) != len(words):
      raise ValueError("Duplicate words in the vocabulary")
    self.words = list(words)
    self.min_count = min_count
    self._ids = {w: i for i, w in enumerate(self.words)}

  pad_id = SPECIALS.index(PAD)
  bos_id = SPECIALS.index(BOS)
  eos_id = SPECIALS.index(EOS)
  unk_id = SPECIALS.index(UNK)

  @classmethod
  def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
    """Keeps the words that occur at least `min_count` times in `captions`; others become <unk>."""
    counts = collections.Counter(w for text in captions for w in split_words(text))
    kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                  key=lambda w: (-counts[w], w))
    return cls([*SPECIALS, *kept], min_count)

  def __len__(self) -> int:
    return len(self.words)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Vocabulary) and self.words == other.words

  def word_id(self, word: str) -> int:
    """The id of `word`, or `unk_id` if it is not in the vocabulary."""
    return self._ids.get(word, self.unk_id)

  def encode(self, text: str, max_length: int) -> np.ndarray:
    """Token ids of `text`: <bos>, the words, <eos>, then <pad> up to `max_length`.

    Words beyond `max_length - 2` are dropped; <eos> is always kept, so every sequence ends.

    Args:
      text: A caption.
      max_length: Length of the result, >= 2 (room for <bos> and <eos>).

    Returns:
      (max_length,) int32 ids.
    """
    if max_length < 2:
      raise ValueError(f"max_length must be >= 2 for <bos> and <eos>, got {max_length}")
    ids = [self.word_id(w) for w in split_words(text)][:max_length - 2]
    out = np.full((max_length,), self.pad_id, np.int32)
    out[:len(ids) + 2] = [self.bos_id, *ids, self.eos_id]
    return out

  def encode_batch(self, texts: Sequence[str], max_length: int) -> np.ndarray:
    """`encode` of each text, stacked: (N, max_length) int32."""
    return np.stack([self.encode(t, max_length) for t in texts]).reshape(len(texts), max_length)

  def decode(self, ids: Iterable[int]) -> str:
    """The words of `ids` joined by spaces, up to the first <eos>; special tokens are skipped."""
    words = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i >= len(SPECIALS):
        words.append(self.words[i])
    return " ".join(words)

  def save(self, path: str) -> None:
    """Writes the vocabulary as JSON: {"words": [...], "min_count": n}."""
    with open(path, "w") as f:
      json.dump({"words": self.words, "min_count": self.min_count}, f, indent=0)

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    """Reads a vocabulary written by `save`."""
    with open(path) as f:
      data = json.load(f)
    return cls(data["words"], data["min_count"])
