"""`diffusion.models.text_encoder` computes what transformers' CLIPTextModel computes,
and `diffusion.data.tokenizers` gives the ids of transformers' CLIPTokenizer.

Text encoder. The transformers models are tiny (vocab 300, width 32, 4 heads,
MLP 64, 2 layers, 16 positions) and randomly initialised (no hub access), with
every 1-D parameter (LayerNorm scales and shifts, biases) moved off its initial
value so that no layer is an identity and a bias put in the wrong place shows;
their folders are written by `save_pretrained`, one as safetensors and one as a
PyTorch pickle.

Tolerance of the comparison (float32 on both sides, the same arithmetic in
other summation orders: oneDNN's matmuls against XLA's). A dot product of K
terms has a rounding error of about sqrt(K) u of its scale, u = 2^-24 = 6e-8;
here K <= 64 (fc2), so each matmul is good to ~5e-7 relative. On the deepest
path lie about a dozen roundings of that size (q, k, v, the logits, the
softmax, the weighted sum, the output projection, fc1, the activation, fc2 and
the LayerNorms, per layer, two layers, the final LayerNorm), adding in
quadrature to ~2e-6 relative, and the output's RMS is about 1 (1.1 and 1.2
here: it leaves a LayerNorm whose scales are 1 +- 0.3). The bound, TOL = 1e-5
absolute, is 5x that; the measured maximum errors are 1.2e-6 (quick_gelu) and
1.4e-6 (gelu), ~6 ulps of the largest outputs (3.2, 4.0). Plausible conversion bugs
miss it by orders of magnitude (measured, quick_gelu / gelu model): one query
kernel left untransposed 0.63 / 0.75, the other GELU 0.027 / 0.024 (both over
the real positions), no padding mask 1.6 / 2.3 (at the padded positions).

Padding. With right padding (what the tokenizers make) every query sees bos,
and all positions, padded ones included, agree with transformers. With left
padding a padded query before the first real token sees no key at all; there
the value is a convention: this encoder (like transformers' eager attention)
averages all values, transformers' default sdpa attention gives other values
(1.8 / 3.4 apart, measured), so those positions are compared with the eager one.

Tokenizer. transformers 5 has one CLIPTokenizer, the one backed by the
tokenizers library (the former "fast" tokenizer); the pure-Python "slow" class
of transformers 4 is gone, so `transformers.CLIPTokenizer(vocab_file,
merges_file)` is the reference. (It also differs from v4's slow tokenizer
without ftfy, which ran BERT's BasicTokenizer: that one put spaces around CJK
characters and deleted control characters.) The vocabulary and merges are
learned here by the tokenizers library's BPE trainer on a small corpus and
written in CLIP's layout: the 256 byte characters, the same with ``</w>``, the
merged tokens in merge order, ``<|startoftext|>``, ``<|endoftext|>``.
"""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from diffusion.data import tokenizers
from diffusion.models import text_encoder as te

TOL = 1e-5  # Absolute, the output RMS being ~1; derived in the module docstring.
VOCAB, BOS_ID, EOS_ID = 300, 298, 299
CONFIG = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=16, bos_token_id=BOS_ID,
              eos_token_id=EOS_ID, pad_token_id=EOS_ID)
LENGTHS = (12, 7, 3, 1)  # Real tokens per row (bos ... eos); rows are 12 long.


def _hf_folder(folder, act, safetensors, seed):
  torch.manual_seed(seed)
  model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**CONFIG, hidden_act=act))
  model.eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=safetensors)
  return model


def _batch(seed=0, left=False):
  """Token ids [4, 12] (bos, random ids, eos, then eos as padding) and the mask."""
  rng = np.random.default_rng(seed)
  length = max(LENGTHS)
  mask = np.arange(length)[None] < np.array(LENGTHS)[:, None]
  ids = np.where(mask, rng.integers(0, BOS_ID, (len(LENGTHS), length)), EOS_ID)
  ids[:, 0] = BOS_ID
  ids[np.arange(len(LENGTHS)), np.array(LENGTHS) - 1] = EOS_ID
  if left:
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()
    ids[:, -1] = EOS_ID
  return ids.astype(np.int32), mask


def _theirs(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)))
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@pytest.fixture(scope="module", params=[("quick_gelu", True), ("gelu", False)],
                ids=["quick_gelu-safetensors", "gelu-bin"])
def ported(request, tmp_path_factory):
  act, safetensors = request.param
  folder = tmp_path_factory.mktemp(f"clip_{act}")
  model = _hf_folder(folder, act, safetensors, seed=int(safetensors))
  encoder, params = te.load_hf_folder(folder)
  return dict(model=model, folder=folder, encoder=encoder, params=params,
              apply=jax.jit(encoder.apply), act=act)


def test_the_encoder_computes_what_transformers_computes(ported):
  encoder, params = ported["encoder"], ported["params"]
  assert encoder.fields() == dict(vocab_size=VOCAB, width=32, num_layers=2, num_heads=4,
                                  max_length=16, mlp_dim=64, activation=ported["act"],
                                  layer_norm_eps=1e-5, dtype="float32")
  ids, mask = _batch()
  ref, ref_pooled = _theirs(ported["model"], ids, mask)
  ours = np.asarray(ported["apply"]({"params": params}, ids, mask))
  assert ours.dtype == np.float32 and ours.shape == (4, 12, 32)
  assert 0.5 < np.sqrt(np.mean(ref ** 2)) < 2  # The scale TOL assumes.
  assert np.max(np.abs(ours - ref)) < TOL  # Every position: right padding (module doc).
  pooled = np.asarray(te.pooled(ours, ids, EOS_ID))
  assert np.max(np.abs(pooled - ref_pooled)) < TOL
  np.testing.assert_array_equal(pooled, ours[np.arange(4), np.array(LENGTHS) - 1])
  # Left padding: the real positions agree; the padded ones, which see no real
  # key, follow transformers' eager attention (module doc).
  ids, mask = _batch(left=True)
  ours = np.asarray(ported["apply"]({"params": params}, ids, mask))
  sdpa, _ = _theirs(ported["model"], ids, mask)
  assert np.max(np.abs(ours - sdpa)[mask]) < TOL
  eager = transformers.CLIPTextModel.from_pretrained(ported["folder"], attn_implementation="eager")
  eager_out, _ = _theirs(eager.eval(), ids, mask)
  assert np.max(np.abs(ours - eager_out)) < TOL


def test_plausible_conversion_bugs_miss_the_tolerance_by_far(ported):
  encoder, params, apply = ported["encoder"], ported["params"], ported["apply"]
  ids, mask = _batch()
  ref, _ = _theirs(ported["model"], ids, mask)
  untransposed = jax.tree.map(lambda v: v, params)
  query = untransposed["layers_0"]["attn"]["query"]
  query["kernel"] = query["kernel"].T
  assert np.max(np.abs(apply({"params": untransposed}, ids, mask) - ref)[mask]) > 1e4 * TOL
  other_gelu = "gelu" if ported["act"] == "quick_gelu" else "quick_gelu"
  other = te.TextEncoder(**{**encoder.fields(), "activation": other_gelu})
  assert np.max(np.abs(other.apply({"params": params}, ids, mask) - ref)[mask]) > 1e3 * TOL
  unmasked = np.asarray(apply({"params": params}, ids, None))
  assert np.max(np.abs(unmasked - ref)[mask]) < TOL  # Causality hides right padding ...
  assert np.max(np.abs(unmasked - ref)[~mask]) > 1e4 * TOL  # ... from the real tokens only.
  # Causal: changing the last real token of row 0 leaves the earlier positions as they were.
  changed = ids.copy()
  changed[0, LENGTHS[0] - 2] = (changed[0, LENGTHS[0] - 2] + 1) % BOS_ID
  after = np.asarray(apply({"params": params}, changed, mask))
  before = np.asarray(apply({"params": params}, ids, mask))
  np.testing.assert_array_equal(after[0, :LENGTHS[0] - 2], before[0, :LENGTHS[0] - 2])
  assert np.max(np.abs(after[0, LENGTHS[0] - 2:] - before[0, LENGTHS[0] - 2:])) > 1e-2


def test_the_command_converts_to_an_npz_that_load_params_reads(ported, tmp_path, capsys):
  out = tmp_path / "clip.npz"
  assert te.main(["--convert", str(ported["folder"]), "--out", str(out)]) == 0
  line = capsys.readouterr().out.strip()
  n = te.param_count(ported["params"])
  assert line.count("\n") == 0 and f"{n:,} parameters" in line and str(out) in line
  assert n == sum(p.numel() for p in ported["model"].parameters())
  encoder, params = te.load_params(out)
  assert encoder == ported["encoder"]
  ids, mask = _batch(seed=1)
  np.testing.assert_array_equal(ported["apply"]({"params": params}, ids, mask),
                                ported["apply"]({"params": ported["params"]}, ids, mask))
  # A missing folder: one line on stderr, exit code 2, nothing written.
  code = te.main(["--convert", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npz")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.count("\n") == 0 and "no such folder" in err
  assert not (tmp_path / "x.npz").exists()


def test_state_dicts_that_do_not_fit_are_named(ported):
  """transformers 5's keys have no prefix; transformers 4's (and the hub's older
  files) start with ``text_model.`` and some hold the position_ids buffer."""
  state = {k: v.numpy() for k, v in ported["model"].state_dict().items()}
  assert "embeddings.token_embedding.weight" in state
  old = {"text_model." + k: v for k, v in state.items()}
  old["text_model.embeddings.position_ids"] = np.arange(16)[None]
  for a, b in zip(jax.tree.leaves(te.params_from_state_dict(old, 2)),
                  jax.tree.leaves(ported["params"])):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"1 missing \(e.g. \['encoder.layers.1.mlp.fc2.bias'\]"):
    te.params_from_state_dict({k: v for k, v in state.items() if "layers.1.mlp.fc2.b" not in k},
                              2)
  with pytest.raises(ValueError, match=r"num_layers=1: 16 unknown \(e.g. \['encoder.layers.1"):
    te.params_from_state_dict(state, 1)
  with pytest.raises(ValueError, match=r"q_proj.weight has shape \[32, 16\]"):
    te.params_from_state_dict(
        {**state, "encoder.layers.0.self_attn.q_proj.weight": np.zeros((32, 16))}, 2)
  with pytest.raises(ValueError, match="both with and without"):
    te.params_from_state_dict({**state, **old}, 2)


def test_fields_and_inputs_are_checked():
  fields = dict(vocab_size=10, width=8, num_layers=1, num_heads=2, max_length=4)
  for change, message in [(dict(num_heads=3), "num_heads=3 must divide width=8"),
                          (dict(activation="relu"), "activation='relu' is unknown"),
                          (dict(max_length=0), "max_length must be an int >= 1"),
                          (dict(dtype="int8"), "dtype=int8 is not supported")]:
    with pytest.raises(ValueError, match=message):
      te.TextEncoder(**{**fields, **change})
  encoder = te.TextEncoder(**fields)
  params = encoder.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
  assert te.param_count(params) == 10 * 8 + 4 * 8 + (4 * (8 * 8 + 8) + 2 * 8 * 32 + 32 + 8
                                                     + 4 * 8) + 2 * 8
  for tokens, mask, message in [
      (np.zeros((1, 5), np.int32), None, "5 tokens per row; .* 1..max_length=4"),
      (np.array([[0, 10]]), None, r"in \[0, vocab_size=10\), got ids from 0 to 10"),
      (np.zeros((1, 3)), None, "must be integer ids"),
      (np.zeros((1, 3), np.int32), np.ones((1, 2), bool), "mask has shape")]:
    with pytest.raises(ValueError, match=message):
      encoder.apply({"params": params}, tokens, mask)
  with pytest.raises(ValueError, match=r"rows \[1\] have no eos"):
    te.pooled(np.zeros((2, 3, 8)), np.array([[0, 2, 2], [0, 1, 1]]), eos_id=2)


# ------------------------------------------------------------------ CLIP tokenizer
CORPUS = [
    "a photo of a cat", "a painting of a dog's house by the sea", "a photo of two cats on a mat",
    "They're sitting on the mat, aren't they? We'll see.", "an astronaut riding a horse on mars",
    "Two cats and 3 dogs playing in the snow at 12:30!", "the quick brown fox jumps over the dog",
    "a café in Paris, naïve art", "Ünïcödé letters: ΑΒΓ Привет 日本語", "photos of photographers",
    "a watercolor painting of mountains and rivers under a starry night sky",
    "portrait of an elderly fisherman wearing a yellow raincoat, highly detailed",
    "a bowl of fruit with apples, oranges, bananas and grapes on a wooden table",
    "an isometric illustration of a futuristic city with flying cars and neon lights",
    "children building a sandcastle on a sunny beach next to the ocean waves",
    "a black and white photograph of a vintage motorcycle parked outside a diner",
]
TEXTS = [
    "a photo of a cat",
    "A PHOTO of a Dog",
    "  extra   spaces\tand\ttabs\nnew\r\nlines  ",
    "it's a dog's life, isn't it? they're here; we've seen. I'm sure you'll say he'd",
    "dog's DOG'S Dog'S o'clock",
    "Hello!!! ...?? (parens) [brackets] {braces} #hash @at $5 100% a+b=c",
    "3 cats, 12 dogs and 2024 birds: 3.14159",
    "Café naïve façade Ünïcödé",
    "e\u0301clair",  # A combining accent: NFC makes it one character.
    "ΟΔΟΣ and Σίσυφος",  # Capital sigma at a word's end.
    "日本語のテキスト 中文",
    "Привет мир",
    "emoji 🙂🐱 and ♥",
    "non\u00a0breaking\u3000ideographic\u2003em space",
    "control\x1cchars\x85here",  # \x1c is whitespace to Python only; \x85 to both.
    "x²+y½=Ⅻ",  # Numerals of categories No and Nl.
    "snake_case_words and under__scores",
    "'quoted' \"double\" `back`",
    "",
    "a photo<|endoftext|>of a <|startoftext|>cat",
    "<|ENDOFTEXT|> is not special",
    "a photo of a cat sitting on the mat " * 10,  # 90 words: truncated to 77.
]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
  """vocab.json and merges.txt learned on CORPUS, in CLIP's layout (module doc)."""
  pattern = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
  learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
  learner.normalizer = normalizers.Lowercase()
  learner.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  learner.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      end_of_word_suffix="</w>", show_progress=False))
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            for m in json.loads(learner.to_str())["model"]["merges"]]
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {}
  for token in (alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
                + ["<|startoftext|>", "<|endoftext|>"]):
    vocab.setdefault(token, len(vocab))
  folder = tmp_path_factory.mktemp("clip_tokenizer")
  (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  (folder / "merges.txt").write_text(
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
  assert len(merges) > 200 and any(len(a + b) > 6 for a, b in merges)
  return folder


def test_the_clip_tokenizer_gives_transformers_ids(clip_files):
  vocab, merges = str(clip_files / "vocab.json"), str(clip_files / "merges.txt")
  ours = tokenizers.CLIPTokenizer.from_files(vocab, merges)
  theirs = transformers.CLIPTokenizer(vocab, merges)
  assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.vocab_size) == (
      theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, len(theirs))
  ids, mask = ours.encode(TEXTS)
  ref = theirs(TEXTS, padding="max_length", max_length=77, truncation=True)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (len(TEXTS), 77)
  for i, text in enumerate(TEXTS):
    assert ids[i].tolist() == ref["input_ids"][i], text
    assert mask[i].tolist() == [bool(m) for m in ref["attention_mask"][i]], text
    assert ours.encode_ids(text) == theirs(text)["input_ids"], text
  assert len(ours.encode_ids(TEXTS[-1])) > 77 and ids[-1, -1] == ours.eos_id and mask[-1].all()
  assert ids[TEXTS.index("")].tolist()[:3] == [ours.bos_id, ours.eos_id, ours.pad_id]
  assert mask[TEXTS.index("")].sum() == 2
  # Another pad token, as some CLIP models use ("!", Stable Diffusion 2): only the
  # padding changes. transformers makes the pad token special, so that it also
  # cuts "!" out of texts before BPE ("!!!" -> 3 tokens, "!!" + "!</w>" here and
  # in open_clip): texts with a "!" are left out.
  texts = [t for t in TEXTS if "!" not in t]
  bang = tokenizers.CLIPTokenizer.from_files(vocab, merges, max_length=16, pad_token="!")
  ref = transformers.CLIPTokenizer(vocab, merges, pad_token="!")(
      texts, padding="max_length", max_length=16, truncation=True)
  bang_ids, bang_mask = bang.encode(texts)
  assert bang_ids.tolist() == ref["input_ids"] and bang_mask.astype(int).tolist() == ref[
      "attention_mask"]
  assert bang.pad_id == json.loads((clip_files / "vocab.json").read_text())["!"]


def test_the_re_fallback_differs_only_on_numerals_that_are_not_digits(clip_files, monkeypatch):
  exact = tokenizers.load(clip_files)
  monkeypatch.setattr(tokenizers, "_regex", None)
  fallback = tokenizers.load(clip_files)
  assert fallback._pattern.pattern == tokenizers.RE_PATTERN  # pylint: disable=protected-access
  for text in TEXTS:
    same = exact.encode_ids(text) == fallback.encode_ids(text)
    assert same == (text != "x²+y½=Ⅻ"), text


# ------------------------------------------------------------------ word tokenizer
CAPTIONS = ["A red circle.", "a blue square", "Two red squares!", "3 blue circles", "a red circle"]


def test_the_word_tokenizer_builds_a_deterministic_vocabulary(tmp_path):
  tok = tokenizers.WordTokenizer.build(CAPTIONS, max_length=6)
  # a, red: 3 times; blue, circle: twice; then the words seen once, alphabetically.
  assert tok.words == ("a", "red", "blue", "circle", "3", "circles", "square", "squares", "two")
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (0, 1, 2, 3, 13)
  assert tokenizers.WordTokenizer.build(CAPTIONS[::-1], max_length=6) == tok
  ids, mask = tok.encode(["A red square.", "a GREEN circle", "a red blue circle 3 two", "",
                          "3"])
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert ids.tolist() == [[1, 4, 5, 10, 2, 0],
                          [1, 4, 3, 7, 2, 0],  # green: <unk>.
                          [1, 4, 5, 6, 7, 2],  # 6 words: 4 kept, eos last.
                          [1, 2, 0, 0, 0, 0],  # The null prompt.
                          [1, 8, 2, 0, 0, 0]]
  assert mask.tolist() == [[True] * 5 + [False], [True] * 5 + [False], [True] * 6,
                           [True] * 2 + [False] * 4, [True] * 3 + [False] * 3]
  assert tok.encode("a red circle")[0].shape == (1, 6)
  assert tokenizers.WordTokenizer.split("A dog's ball, 3d-cats_2!") == [
      "a", "dog", "s", "ball", "3d", "cats", "2"]
  assert tok.decode(ids[2]) == "a red blue circle"
  assert tokenizers.WordTokenizer.build(CAPTIONS, min_count=2).words == (
      "a", "red", "blue", "circle")
  # Round trips: JSON, a file, and tokenizers.load, which tells the kinds apart.
  text = tok.to_json()
  assert tokenizers.WordTokenizer.from_json(text) == tok
  assert tokenizers.WordTokenizer.from_json(text).to_json() == text
  tok.save(tmp_path / "words.json")
  loaded = tokenizers.load(tmp_path / "words.json")
  assert isinstance(loaded, tokenizers.WordTokenizer) and loaded == tok
  np.testing.assert_array_equal(loaded.encode(CAPTIONS)[0], tok.encode(CAPTIONS)[0])
  with pytest.raises(ValueError, match="max_length must be an int >= 2"):
    tokenizers.WordTokenizer.build(CAPTIONS, max_length=1)
  with pytest.raises(ValueError, match="'Red' is not a word"):
    tokenizers.WordTokenizer(["Red"])
  with pytest.raises(ValueError, match='expected an object with "kind": "word"'):
    tokenizers.WordTokenizer.from_json('{"kind": "clip"}')
  with pytest.raises(FileNotFoundError, match="no such file or folder"):
    tokenizers.load(tmp_path / "missing.json")


def test_a_frozen_clip_text_model_trains_around_its_fixed_encoder(clip_files, tmp_path):
  """`text.encoder="clip"`: the converted encoder's weights are the train state's
  ``params["text"]`` (equal to the file), CLIP's tokenizer reads the prompts, and two
  train steps move the UNet but leave the encoder bit-identical (frozen by the
  optimizer), while the UNet's loss still depends on the encoder's embeddings."""
  from configs import digits_text  # pylint: disable=g-import-not-at-top
  from diffusion import experiment  # pylint: disable=g-import-not-at-top
  from diffusion.dist import compile as compile_lib  # pylint: disable=g-import-not-at-top
  from diffusion.dist import placement  # pylint: disable=g-import-not-at-top
  from diffusion.train import step as train_step  # pylint: disable=g-import-not-at-top
  tok = tokenizers.CLIPTokenizer.from_files(clip_files / "vocab.json", clip_files / "merges.txt",
                                            max_length=16)
  torch.manual_seed(0)
  hf = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=16, bos_token_id=tok.bos_id,
      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
  hf.save_pretrained(tmp_path / "hf")
  encoder, params = te.load_hf_folder(tmp_path / "hf")
  te.save_params(tmp_path / "clip.npz", encoder, params)
  config = digits_text.get_config()
  config.model.ch = 16
  config.data.batch_size = 8
  config.optim.warmup_steps = 0
  config.text.update(encoder="clip", clip_weights=str(tmp_path / "clip.npz"), max_length=16,
                     vocab_file=str(clip_files / "vocab.json"),
                     merges_file=str(clip_files / "merges.txt"))
  exp = experiment.build(config)
  state = exp.init_state()
  for a, b in zip(jax.tree.leaves(state.params["text"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  inputs = exp.tokenize(["a thin 3", "a thick 7 slanted to the left"] * 4)
  np.testing.assert_array_equal(np.asarray(inputs["tokens"]),
                                tok.encode(["a thin 3", "a thick 7 slanted to the left"] * 4)[0])
  batch = {"image": np.zeros((8, 8, 8, 1), np.float32) + 0.1, "label": np.zeros(8, np.int32),
           **{k: np.asarray(v) for k, v in inputs.items()}}
  step = compile_lib.compile_step(train_step.make_train_step(exp.loss_fn, exp.tx, config),
                                  "jit", placement.make_mesh(jax.devices()[:1]))
  before = jax.tree.map(np.array, state.params)  # Copies: the step donates the state.
  new = step.replicate(state)
  for _ in range(2):
    new, _ = step(new, step.shard_batch(batch))
  new = step.unreplicate(new)
  for a, b in zip(jax.tree.leaves(new.params["text"]), jax.tree.leaves(before["text"])):
    np.testing.assert_array_equal(np.asarray(a), b)
  moved = [float(np.abs(np.asarray(a) - b).max())
           for a, b in zip(jax.tree.leaves(new.params["net"]), jax.tree.leaves(before["net"]))]
  assert max(moved) > 1e-4
  # The encoder's output reaches the loss: other prompts, another loss.
  other = dict(batch, tokens=np.asarray(exp.tokenize(["a 5"] * 8)["tokens"]),
               mask=np.asarray(exp.tokenize(["a 5"] * 8)["mask"]))
  key = jax.random.PRNGKey(0)
  loss = jax.jit(lambda p, b: exp.loss_fn(p, b, key)[0])  # One compile; eager is ~10 s a call.
  loss_a, loss_b = float(loss(new.params, batch)), float(loss(new.params, other))
  assert abs(loss_a - loss_b) > 1e-6
