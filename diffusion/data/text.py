"""Caption data of text-conditional models: a dataset's captions, its tokenizer, and
the token arrays that every batch carries.

    captions, bins = text.dataset_captions(it, config)   # one caption per example
    tok = text.build_tokenizer(config.text, captions)      # word vocabulary, or CLIP's BPE
    text.attach(it, tok, captions)                         # batches gain "tokens", "mask"
    text.save(workdir, tok, bins, prompts); text.load(workdir)   # for sample / eval

Captions (``config.text.captions``): "attributes" (digits, MNIST, any labelled
gray data: the label and the stroke thickness, slant and size measured on the image,
`diffusion.data.captions`: "a thin 7 slanted to the right"); "files" (an image
folder's ``.txt`` beside each image or its ``captions.jsonl``). The attribute bins
(tertiles of the training set) are saved with the tokenizer so that samples are
measured against the same thresholds.
"""
from __future__ import annotations

import json
import os

import numpy as np

from diffusion.core import checks
from diffusion.data import captions as caps
from diffusion.data import tokenizers

TEXT_DIR = "text"  # workdir/text/: tokenizer.json, bins.json, prompts.json


def _float_images(it) -> np.ndarray:
  images = np.asarray(it.images, np.float32)
  return images / (it.levels - 1) * 2.0 - 1.0


def dataset_captions(it, config, bins=None):
  """``(captions [N], bins or None)`` of the iterator's examples (module doc); attribute
  captions use `bins` when given (a resumed run's saved ones), else fit new tertiles."""
  t = config.text
  if t.captions == "files":
    files = getattr(it.images, "files", None)
    found = caps.read_caption_files(files) if files else None
    if not found:
      raise checks.ConfigError(
          "config.text.captions='files' needs an image folder (config.data.source='files') "
          "with a .txt caption beside each image or a captions.jsonl; "
          f"{config.data.data_dir or config.data.source!r} has none")
    return list(found), None
  if it.labels is None or config.data.channels != 1:
    raise checks.ConfigError(
        "config.text.captions='attributes' measures labelled gray images (digits, MNIST; "
        f"config.data.channels=1); {config.data.source!r} with {config.data.channels} "
        "channels has none: use captions='files'")
  images = _float_images(it)
  if bins is None:
    bins = caps.AttributeBins.fit(caps.measure(images))
  return caps.captions_for(images, np.asarray(it.labels), bins), bins


def build_tokenizer(text_config, captions):
  """A `WordTokenizer` of the captions (encoder "trained"), or CLIP's BPE from its files."""
  if text_config.encoder == "clip":
    return tokenizers.CLIPTokenizer.from_files(text_config.vocab_file, text_config.merges_file,
                                               max_length=text_config.max_length)
  tok = tokenizers.WordTokenizer.build(captions, max_length=text_config.max_length)
  if tok.vocab_size > text_config.vocab_size:  # The most frequent words; the rest read <unk>.
    keep = tok.words[:text_config.vocab_size - len(tokenizers.WordTokenizer.SPECIALS)]
    tok = tokenizers.WordTokenizer(keep, max_length=text_config.max_length)
  return tok


def attach(it, tokenizer, captions) -> None:
  """Adds every example's ``tokens`` (int32 ``[N, L]``) and ``mask`` (bool) to `it`'s batches."""
  ids, mask = tokenizer.encode(list(captions))
  it.extras["tokens"] = np.asarray(ids, np.int32)
  it.extras["mask"] = np.asarray(mask, bool)


def default_prompts(text_config, captions) -> list[str]:
  """Grid rows when ``sample.prompt`` is unset: for attribute captions, pairs that differ
  in one attribute ("a thin 3", "a thick 3", ...); otherwise the first 10 distinct captions."""
  if text_config.captions == "attributes":
    pairs = [("thickness", 3), ("size", 7), ("slant", 4), ("thickness", 0), ("slant", 1)]
    out = []
    for attribute, digit in pairs:
      for word in caps.WORDS[attribute]:
        out.append(caps.caption(digit, {attribute: word}))
    return out
  return list(dict.fromkeys(captions))[:10]


def save(workdir, tokenizer, bins, prompts) -> None:
  """Writes ``workdir/text/{tokenizer,bins,prompts}.json`` (process 0's caller)."""
  d = os.path.join(os.fspath(workdir), TEXT_DIR)
  os.makedirs(d, exist_ok=True)
  if isinstance(tokenizer, tokenizers.WordTokenizer):
    tokenizer.save(os.path.join(d, "tokenizer.json"))
  with open(os.path.join(d, "bins.json"), "w") as f:
    json.dump(None if bins is None else bins.to_dict(), f, indent=2)
  with open(os.path.join(d, "prompts.json"), "w") as f:
    json.dump(list(prompts), f, indent=2)


def load(workdir, text_config):
  """``(tokenizer, bins or None, default prompts)`` saved by a train run in `workdir`."""
  d = os.path.join(os.fspath(workdir), TEXT_DIR)
  if not os.path.exists(os.path.join(d, "prompts.json")):
    raise checks.ConfigError(f"{d} has no prompts.json: this text model's workdir was not "
                             "trained (train first)")
  if text_config.encoder == "clip":
    tok = build_tokenizer(text_config, [])
  else:
    tok = tokenizers.WordTokenizer.load(os.path.join(d, "tokenizer.json"))
  with open(os.path.join(d, "bins.json")) as f:
    b = json.load(f)
  with open(os.path.join(d, "prompts.json")) as f:
    prompts = json.load(f)
  return tok, (None if b is None else caps.AttributeBins.from_dict(b)), prompts
