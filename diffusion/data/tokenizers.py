"""Caption tokenizers for text-conditioned models: CLIP's byte-level BPE and a word vocabulary.

Both turn a batch of captions into fixed-length arrays,

    ids, mask = tokenizer.encode(["a photo of a cat", ""])  # int32 [N, L], bool [N, L]

with ``ids[n] = bos, tokens..., eos, pad, pad, ...`` and ``mask`` True on the
real tokens (bos, the text's tokens and eos) and False on the padding. A text
longer than ``L - 2`` tokens is truncated and its eos stays last. The empty
string encodes to bos, eos and padding: the null prompt of classifier-free
guidance.

`CLIPTokenizer` reads a CLIP ``vocab.json`` / ``merges.txt`` pair (what
``openai/clip-vit-*`` and Stable Diffusion's ``tokenizer/`` folders hold) and
gives the ids of transformers' `CLIPTokenizer` (module doc of the class). It
needs no ``transformers`` and no ``tokenizers``; the ``regex`` module, when it
can be imported, gives the exact Unicode letter and number classes of the
pre-tokenisation, and a documented `re` approximation is used otherwise.

`WordTokenizer` is a word-level vocabulary built from the training captions
themselves, for a text encoder trained from scratch (small datasets whose
captions come from a few templates and words).
"""
from __future__ import annotations

import collections
import json
import os
import re
import unicodedata
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

try:
  import regex as _regex
except ImportError:  # pragma: no cover  (regex comes with transformers)
  _regex = None

Texts = Union[str, Sequence[str]]

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
# Unicode's White_Space characters: what `\s` means to the tokenizers library
# (transformers' CLIPTokenizer). Python's `\s` / str.isspace also take
# U+001C..U+001F, which there are ordinary (punctuation-like) symbols.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTRACTIONS = "'s|'t|'re|'ve|'m|'ll|'d"
# CLIP's pre-tokenisation: a contraction, a run of letters, one number
# character, or a run of anything else that is not whitespace.
CLIP_PATTERN = rf"{_CONTRACTIONS}|\p{{L}}+|\p{{N}}|[^{_WHITESPACE}\p{{L}}\p{{N}}]+"
# The same with Python's `re`, which has no \p{...}: letters are word characters
# that are neither decimal digits nor "_", numbers are decimal digits (\d).
# Exact for every letter and for decimal digits; other numerals (superscripts
# such as "²", fractions, roman numerals: Unicode categories No and Nl) count
# as letters here, where CLIP makes each of them a token of its own.
RE_PATTERN = rf"{_CONTRACTIONS}|[^\W\d_]+|\d|(?:[^\w{_WHITESPACE}]|_)+"
_SPECIAL_SPLIT = re.compile(f"({re.escape(BOS)}|{re.escape(EOS)})")
_SPACES = re.compile(f"[{_WHITESPACE}]+")
_CACHE_SIZE = 100_000


def _check_max_length(owner: str, max_length) -> int:
  if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
    raise ValueError(f"{owner}: max_length must be an int >= 2 (room for bos and eos), "
                     f"got {max_length!r}")
  return max_length


def _as_list(texts: Texts, owner: str) -> list[str]:
  if isinstance(texts, str):
    return [texts]
  texts = list(texts)
  bad = [t for t in texts if not isinstance(t, str)]
  if bad:
    raise ValueError(f"{owner}.encode takes a str or a sequence of str, got an element "
                     f"{bad[0]!r} of type {type(bad[0]).__name__}")
  return texts


def _pad(rows: list[list[int]], max_length: int, eos_id: int, pad_id: int):
  """`[bos, t..., eos]` rows -> (ids int32 [N, L], mask bool [N, L]), truncating
  each row's tokens so that its eos stays last."""
  ids = np.full((len(rows), max_length), pad_id, np.int32)
  mask = np.zeros((len(rows), max_length), bool)
  for n, row in enumerate(rows):
    if len(row) > max_length:
      row = row[:max_length - 1] + [eos_id]
    ids[n, :len(row)] = row
    mask[n, :len(row)] = True
  return ids, mask


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2 / CLIP's reversible map of the 256 byte values to printable characters.

  Bytes that are printable Latin-1 characters ("!".."~", "¡".."¬", "®".."ÿ")
  stand for themselves; the other 68 (controls, space, soft hyphen, ...) take
  the characters U+0100, U+0101, ... in increasing byte order. BPE then works
  on these characters, so every UTF-8 string has a spelling in the vocabulary.
  """
  printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(
      range(ord("®"), ord("ÿ") + 1))
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _lower(text: str) -> str:
  """Lower-cases character by character, as the tokenizers library does: Python's
  str.lower alone turns a word-final capital sigma into "ς" (Unicode's Final_Sigma
  rule), which transformers' CLIPTokenizer makes "σ"; every other mapping is the same."""
  return text.replace("Σ", "σ").lower()


def clean(text: str) -> str:
  """CLIP's text cleanup without ftfy: NFC normalisation, every run of whitespace
  made one space, stripped, lower-cased (`_lower`)."""
  text = unicodedata.normalize("NFC", text)
  return _lower(_SPACES.sub(" ", text).strip())


class CLIPTokenizer:
  """CLIP's byte-level BPE tokenizer, from a ``vocab.json`` and a ``merges.txt``.

  The ids are those of transformers' `CLIPTokenizer` (transformers 5, which
  wraps the tokenizers library; it is the former fast tokenizer) with
  ``padding="max_length", truncation=True, max_length=max_length``:

  1. The special tokens ``<|startoftext|>`` and ``<|endoftext|>`` written in
     the text (exactly, case-sensitively) become their ids; the text between
     them is encoded piece by piece.
  2. Cleanup (`clean`): NFC, whitespace collapsed, stripped, lower-cased. ftfy
     is not applied (transformers' tokenizer does not apply it either; OpenAI's
     reference code runs ftfy.fix_text and html.unescape first, which changes
     only texts with mojibake or HTML entities).
  3. Pre-tokenisation with `CLIP_PATTERN` (contractions, letter runs, single
     digits, runs of other symbols; whitespace is dropped), or `RE_PATTERN`
     where the regex module is missing.
  4. Each piece's UTF-8 bytes are spelled with `bytes_to_unicode`, the last
     character gets the end-of-word marker ``</w>``, and BPE merges the
     adjacent pair of lowest rank (the line number in ``merges.txt``;
     the leftmost such pair first) until no pair has a rank.
  5. The pieces become ids through ``vocab.json``; a piece missing there (only
     possible with a vocabulary that lacks some byte characters) becomes
     ``<|endoftext|>``, transformers' unknown token.

  OpenAI's code differs from this in recognising special tokens after
  lower-casing (``<|ENDOFTEXT|>`` is the eos there and 9 BPE pieces here).

  Attributes:
    max_length: the length L of `encode`'s rows (77 for CLIP).
    pad_token: the token that fills rows after eos; transformers pads with
      ``<|endoftext|>`` (so padding ids equal the eos id and only the mask
      tells them apart); some models use another (e.g. "!", Stable Diffusion
      2). It only pads: transformers also makes it a special token that is cut
      out of the text before BPE ("!!!" becomes three "!" there, "!!" and
      "!</w>" here and in open_clip).
  """

  def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]],
               max_length: int = 77, pad_token: str = EOS):
    self.max_length = _check_max_length("CLIPTokenizer", max_length)
    self._vocab = dict(vocab)
    for name, token in (("bos", BOS), ("eos", EOS), ("pad_token", pad_token)):
      if token not in self._vocab:
        raise ValueError(f"CLIPTokenizer: the vocabulary has no {name} token {token!r}")
    ranks = {}
    for rank, pair in enumerate(merges):
      if len(pair) != 2:
        raise ValueError(f"CLIPTokenizer: merge {rank} is {pair!r}; a merge is two symbols")
      pair = (pair[0], pair[1])
      if pair[0] + pair[1] not in self._vocab:
        raise ValueError(f"CLIPTokenizer: merge {rank} {pair} makes {pair[0] + pair[1]!r}, "
                         "which is not in the vocabulary")
      ranks.setdefault(pair, rank)  # A repeated merge keeps its first rank.
    self._ranks = ranks
    self.pad_token = pad_token
    self._bytes = bytes_to_unicode()
    self._pattern = (_regex.compile(CLIP_PATTERN) if _regex is not None
                     else re.compile(RE_PATTERN))
    self._cache: dict[str, tuple[str, ...]] = {}

  @classmethod
  def from_files(cls, vocab_json, merges_txt, max_length: int = 77,
                 pad_token: str = EOS) -> "CLIPTokenizer":
    """Reads CLIP's files: ``vocab.json`` (token -> id) and ``merges.txt`` (an
    optional ``#version`` first line, then one merge per line: two symbols and
    one space between them; blank lines are skipped)."""
    with open(vocab_json, encoding="utf-8") as f:
      vocab = json.load(f)
    if not isinstance(vocab, dict):
      raise ValueError(f"{vocab_json}: a vocab.json maps tokens to ids, this holds a "
                       f"{type(vocab).__name__}")
    merges = []
    with open(merges_txt, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        line = line.rstrip("\r\n")
        if not line or (number == 1 and line.startswith("#version")):
          continue
        pair = line.split(" ")
        if len(pair) != 2:
          raise ValueError(f"{merges_txt}:{number}: {line!r} is not a merge (two symbols "
                           "and one space)")
        merges.append((pair[0], pair[1]))
    return cls(vocab, merges, max_length=max_length, pad_token=pad_token)

  # ------------------------------------------------------------ properties
  @property
  def vocab_size(self) -> int:
    """Number of ids: one more than the largest id in the vocabulary."""
    return max(self._vocab.values()) + 1

  @property
  def bos_id(self) -> int:
    return self._vocab[BOS]

  @property
  def eos_id(self) -> int:
    return self._vocab[EOS]

  @property
  def pad_id(self) -> int:
    return self._vocab[self.pad_token]

  # -------------------------------------------------------------- encoding
  def _bpe(self, word: str) -> tuple[str, ...]:
    """The BPE pieces of one byte-spelled word (the last one ends in ``</w>``)."""
    pieces = self._cache.get(word)
    if pieces is not None:
      return pieces
    symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(symbols) > 1:
      ranks = [self._ranks.get(pair) for pair in zip(symbols, symbols[1:])]
      known = [r for r in ranks if r is not None]
      if not known:
        break
      i = ranks.index(min(known))
      symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    pieces = tuple(symbols)
    if len(self._cache) >= _CACHE_SIZE:
      self._cache.clear()
    self._cache[word] = pieces
    return pieces

  def tokenize(self, text: str) -> list[str]:
    """The token strings of `text`, without bos and eos."""
    tokens = []
    for part in _SPECIAL_SPLIT.split(text):
      if part in (BOS, EOS):
        tokens.append(part)
        continue
      for word in self._pattern.findall(clean(part)):
        tokens.extend(self._bpe("".join(self._bytes[b] for b in word.encode("utf-8"))))
    return tokens

  def encode_ids(self, text: str) -> list[int]:
    """``[bos, ids of text..., eos]``, neither truncated nor padded (transformers'
    ``tokenizer(text).input_ids``)."""
    unk = self.eos_id
    return [self.bos_id] + [self._vocab.get(t, unk) for t in self.tokenize(text)] + [self.eos_id]

  def encode(self, texts: Texts) -> tuple[np.ndarray, np.ndarray]:
    """A str or a sequence of N str -> (ids int32 [N, max_length], mask bool
    [N, max_length]); module doc for the layout."""
    rows = [self.encode_ids(t) for t in _as_list(texts, "CLIPTokenizer")]
    return _pad(rows, self.max_length, self.eos_id, self.pad_id)

  def __repr__(self) -> str:
    return (f"CLIPTokenizer(vocab_size={self.vocab_size}, merges={len(self._ranks)}, "
            f"max_length={self.max_length}, pad_token={self.pad_token!r})")


class WordTokenizer:
  """A word-level tokenizer whose vocabulary is built from the training captions.

  Words are the maximal runs of letters and digits of the NFC-normalised,
  lower-cased text: whitespace and punctuation separate words and are dropped
  ("A dog's ball, 3 cats!" -> a, dog, s, ball, 3, cats; "3d" and "128" are one
  word each).

  Ids: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3, then the
  words in the order `build` gives them (most frequent first, ties in
  alphabetical order: deterministic for a given caption multiset). A word not
  in the vocabulary encodes to ``<unk>``.

  Attributes:
    words: the vocabulary after the four special tokens (word of id 4 first).
    max_length: the length L of `encode`'s rows.
  """
  PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
  SPECIALS = (PAD, BOS, EOS, UNK)
  KIND = "word"

  def __init__(self, words: Sequence[str], max_length: int = 16):
    self.max_length = _check_max_length("WordTokenizer", max_length)
    self.words = tuple(words)
    seen = set()
    for w in self.words:
      if not isinstance(w, str) or self.split(w) != [w]:
        raise ValueError(f"WordTokenizer: {w!r} is not a word (a lower-case run of letters "
                         "and digits, as WordTokenizer.split makes them)")
      if w in seen:
        raise ValueError(f"WordTokenizer: the word {w!r} is in the vocabulary twice")
      seen.add(w)
    self._ids = {w: i for i, w in enumerate(self.words, len(self.SPECIALS))}

  @staticmethod
  def split(text: str) -> list[str]:
    """The words of `text` (class doc)."""
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFC", text).lower())

  @classmethod
  def build(cls, captions: Iterable[str], max_length: int = 16,
            min_count: int = 1) -> "WordTokenizer":
    """The vocabulary of the words occurring at least `min_count` times in
    `captions`, sorted by (-count, word)."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
      raise ValueError(f"WordTokenizer.build: min_count must be an int >= 1, got {min_count!r}")
    if isinstance(captions, str):
      raise ValueError("WordTokenizer.build takes a sequence of captions, got one str")
    counts = collections.Counter()
    for caption in captions:
      counts.update(cls.split(caption))
    words = sorted((w for w, c in counts.items() if c >= min_count),
                   key=lambda w: (-counts[w], w))
    return cls(words, max_length=max_length)

  @property
  def vocab_size(self) -> int:
    return len(self.SPECIALS) + len(self.words)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def bos_id(self) -> int:
    return 1

  @property
  def eos_id(self) -> int:
    return 2

  @property
  def unk_id(self) -> int:
    return 3

  def encode_ids(self, text: str) -> list[int]:
    """``[bos, word ids..., eos]``, neither truncated nor padded."""
    return [self.bos_id] + [self._ids.get(w, self.unk_id) for w in self.split(text)] + [
        self.eos_id]

  def encode(self, texts: Texts) -> tuple[np.ndarray, np.ndarray]:
    """A str or a sequence of N str -> (ids int32 [N, max_length], mask bool
    [N, max_length]); module doc for the layout."""
    rows = [self.encode_ids(t) for t in _as_list(texts, "WordTokenizer")]
    return _pad(rows, self.max_length, self.eos_id, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    """The words of `ids` joined by spaces (special tokens left out)."""
    vocab = self.SPECIALS + self.words
    return " ".join(vocab[i] for i in ids if int(i) >= len(self.SPECIALS))

  # -------------------------------------------------------------- storage
  def to_json(self) -> str:
    """The tokenizer as a JSON string: ``{"kind": "word", "max_length": L,
    "words": [...]}``."""
    return json.dumps({"kind": self.KIND, "max_length": self.max_length,
                       "words": list(self.words)}, ensure_ascii=False)

  @classmethod
  def from_json(cls, text: str) -> "WordTokenizer":
    try:
      data = json.loads(text)
    except ValueError as e:
      raise ValueError(f"WordTokenizer.from_json: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != cls.KIND:
      raise ValueError('WordTokenizer.from_json: expected an object with "kind": "word", '
                       f"got {str(data)[:80]!r}")
    if sorted(data) != ["kind", "max_length", "words"]:
      raise ValueError('WordTokenizer.from_json: the keys are "kind", "max_length" and '
                       f'"words", got {sorted(data)}')
    return cls(data["words"], max_length=data["max_length"])

  def save(self, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
      f.write(self.to_json())

  @classmethod
  def load(cls, path) -> "WordTokenizer":
    with open(path, encoding="utf-8") as f:
      return cls.from_json(f.read())

  def __eq__(self, other) -> bool:
    return (isinstance(other, WordTokenizer) and self.words == other.words
            and self.max_length == other.max_length)

  def __hash__(self) -> int:
    return hash((self.words, self.max_length))

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


def load(path, max_length: Optional[int] = None) -> Union[CLIPTokenizer, WordTokenizer]:
  """The tokenizer at `path`: a folder with CLIP's ``vocab.json`` and
  ``merges.txt`` (max_length 77 unless given), or a `WordTokenizer.save` file
  (its own max_length unless given)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    files = [os.path.join(path, n) for n in ("vocab.json", "merges.txt")]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise FileNotFoundError(f"tokenizers.load: {path} is a folder without "
                              f"{', '.join(os.path.basename(f) for f in missing)} (a CLIP "
                              "tokenizer folder has vocab.json and merges.txt)")
    return CLIPTokenizer.from_files(*files, max_length=max_length or 77)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizers.load: no such file or folder: {path}")
  tokenizer = WordTokenizer.load(path)
  if max_length is not None:
    tokenizer = WordTokenizer(tokenizer.words, max_length=max_length)
  return tokenizer
