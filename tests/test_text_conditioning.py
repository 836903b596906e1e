"""Text conditioning (issue 15): prompt dropout, caption files reaching the batches,
and a text-conditional model on the 8x8 digits following held-out prompts. (Split from
tests/test_conditioning.py, whose helpers and fixtures it shares, so that the two
files' trainings run on two pytest workers: `--dist loadfile`.)"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_text
from diffusion import experiment
from diffusion.data import captions as caps
from diffusion.data import text as text_data
from diffusion.data import tokenizers

from test_conditioning import BATCH, _small, _train
from test_conditioning import digit_classifier, digits  # noqa: F401  (fixtures)


def test_prompt_dropout_replaces_whole_captions_by_the_empty_prompt():
  """Text: a dropped example's tokens and mask are the empty prompt's (bos, eos, pads),
  at the rate p = 0.1 within 3 SE (n = 50,000: 0.0040)."""
  config = digits_text.get_config()
  tok = tokenizers.WordTokenizer.build(["a thin 3", "a thick 7 slanted to the left"],
                                       max_length=config.text.max_length)
  exp = dataclasses.replace(experiment.build(config), tokenizer=tok)
  n = 50_000
  ids, mask = tok.encode(["a thick 7 slanted to the left"] * n)
  out = exp.batch_inputs({"tokens": jnp.asarray(ids), "mask": jnp.asarray(mask)},
                         jax.random.PRNGKey(1))
  null_ids, null_mask = tok.encode([""])
  dropped = np.all(np.asarray(out["tokens"]) == null_ids, axis=1)
  assert abs(dropped.mean() - 0.1) < 3 * np.sqrt(0.1 * 0.9 / n)
  np.testing.assert_array_equal(np.asarray(out["mask"])[dropped], np.repeat(null_mask, dropped.sum(), 0))
  np.testing.assert_array_equal(np.asarray(out["tokens"])[~dropped], ids[~dropped])
  assert list(null_ids[0, :3]) == [tok.bos_id, tok.eos_id, tok.pad_id]


TEXT_STEPS = 600  # Longer than test_conditioning.STEPS (the class model's): see the docstring.
PER_PROMPT = 250


def test_text_conditional_digits_follow_held_out_prompts(digits, digit_classifier):
  """Train on attribute captions with every caption naming "thick 3" or "thin 7" held out
  (those digits are captioned without that word); then prompt "a thick 3", "a thin 3",
  "a thick 7", "a thin 7" (DDIM-20, w = 3, 250 samples each). Both the digit and the
  thickness word must agree more often than chance by 3 binomial SE at n = 1000: digit
  chance 0.1 -> > 0.1 + 3 sqrt(0.1 * 0.9 / 1000) = 0.128; thickness chance 1/3 (tertile
  bins) -> > 1/3 + 3 sqrt(2/9 / 1000) = 0.378.

  The SE covers the sampling only; the training run itself varies far more. Its
  result moves with float rounding: the data order, XLA's optimisation level, or a
  GroupNorm that is equal to 6e-8 in its gradients each give another run. Measured on
  2026-12-04 at the suite's -O1, data orders 0-3, digit agreement at n = 1000:
  - with `layers.GroupNorm` in every norm: 0.16 / 0.25 / 0.43 / 0.56 after 400 steps,
    0.25 / 0.34 / 0.46 / 0.51 after 600;
  - with the code as it is (flax's norm below 128 channels, i.e. in all of this
    network): 0.33 / 0.39 / 0.38 / 0.52 after 600.
  Thickness was 0.75-0.96. At 400 steps, the worst run sat on the old n = 200 bound
  (0.164). At the 600 steps used here (+6 s), the worst is 2-2.6x this bound.
  (A short run: the MNIST-scale run in the README is the real result.)"""
  x, y = digits
  config = _small(digits_text.get_config(), TEXT_STEPS)
  attrs = caps.measure(x)
  bins = caps.AttributeBins.fit(attrs)
  words = bins.words(attrs)
  held = {("thick", 3), ("thin", 7)}
  for w, label in zip(words, y):
    if (w["thickness"], int(label)) in held:
      w["thickness"] = None
  captions = [caps.caption(int(label), w) for label, w in zip(y, words)]
  assert not any(c.startswith(("a thick 3", "a thin 7")) for c in captions)
  tok = text_data.build_tokenizer(config.text, captions)
  ids, mask = tok.encode(captions)
  exp = dataclasses.replace(experiment.build(config), tokenizer=tok, text_bins=bins)
  rng = np.random.default_rng(0)
  flat = np.concatenate([rng.permutation(len(y))
                         for _ in range(TEXT_STEPS * BATCH // len(y) + 1)])

  def batch(i):
    idx = flat[i * BATCH:(i + 1) * BATCH]
    return {"image": x[idx], "label": y[idx], "tokens": ids[idx], "mask": mask[idx]}

  params = _train(config, exp, batch, TEXT_STEPS)
  prompts = [p for p in ("a thick 3", "a thin 3", "a thick 7", "a thin 7")
             for _ in range(PER_PROMPT)]
  n = len(prompts)
  samples = np.asarray(exp.sample_fn(num_samples=n, cond_inputs=exp.tokenize(prompts))(
      params, jax.random.PRNGKey(0)))
  agree = caps.agreement(prompts, samples, bins, predicted_labels=digit_classifier(samples))
  print(f"text-conditional digits: digit {agree['digit']['agreement']:.3f}, "
        f"thickness {agree['thickness']['agreement']:.3f}")
  assert agree["digit"]["agreement"] > 0.1 + 3 * np.sqrt(0.1 * 0.9 / n)
  assert agree["thickness"]["agreement"] > 1 / 3 + 3 * np.sqrt(2 / 9 / n)


def test_caption_files_of_an_image_folder_reach_every_batch(tmp_path):
  """An image folder with a .txt caption beside each image (`text.captions="files"`):
  every example's caption is read, tokenized and carried by the batches in the data's
  order (each batch's tokens are its own images' captions); without captions, one line."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from diffusion.data import iterator as data  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "imgs"
  folder.mkdir()
  texts = ["a bright square", "a dark square", "a grey bar", "two dots"]
  for i, t in enumerate(texts):
    Image.fromarray(np.full((8, 8), 40 * i + 10, np.uint8)).save(folder / f"im{i}.png")
    (folder / f"im{i}.txt").write_text(t + "\n")
  config = digits_text.get_config()
  config.data.update(source="files", data_dir=str(folder), batch_size=2, image_size=8,
                     channels=1)
  config.text.captions = "files"
  it = data.create(config.data, seed=0)
  found, bins = text_data.dataset_captions(it, config)
  assert found == texts and bins is None
  tok = text_data.build_tokenizer(config.text, found)
  text_data.attach(it, tok, found)
  for _ in range(2):
    b = next(it)
    # Each image's pixel value names its file: 40 i + 10 -> caption i.
    idx = np.round((np.asarray(b["image"])[:, 0, 0, 0] + 1) / 2 * 255 - 10).astype(int) // 40
    np.testing.assert_array_equal(b["tokens"], tok.encode([texts[i] for i in idx])[0])
  (folder / "im0.txt").unlink()
  it = data.create(config.data, seed=0)
  with pytest.raises(ValueError, match="im0"):
    text_data.dataset_captions(it, config)
