"""The repository keeps its promises: CI runs the README's test command, and the
README's example is the file in examples/ and produces the numbers it claims."""
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(text):
  return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  test_cmd = [b.strip() for b in _bash_blocks(readme) if "pytest" in b]
  assert len(test_cmd) == 1, test_cmd
  ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
  assert test_cmd[0] in ci_lines


def test_readme_quick_start_runs_the_digits_default():
  blocks = _bash_blocks((ROOT / "README.md").read_text())
  assert any("python -m diffusion.main --config configs/digits_ddpm.py" in b for b in blocks)
  assert (ROOT / "configs" / "digits_ddpm.py").exists()


def test_readme_example_is_examples_file_and_is_right():
  readme = (ROOT / "README.md").read_text()
  block = re.search(r"`examples/mixture_2d.py`.*?```python\n(.*?)```", readme, flags=re.S).group(1)
  assert block == (ROOT / "examples" / "mixture_2d.py").read_text()
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, str(ROOT / "examples" / "mixture_2d.py")], env=env,
                       capture_output=True, text=True, check=True, timeout=300).stdout
  fractions = [float(v) for v in re.findall(r"mode: ([0-9.]+)", out)]
  assert len(fractions) == 7
  # Binomial SE for n = 2000 at p = 0.4: sqrt(0.24 / 2000) = 0.011; 3 SE = 0.033.
  for f in fractions:
    assert abs(f - 0.4) < 0.033, out


def test_readme_formulations_table_is_the_file_the_code_wrote():
  """The README's DDPM / VDM / EDM table is `python -m diffusion.figures --results`'s
  fid_vs_nfe.md, line for line, and the numbers there are the results.json ones."""
  readme = (ROOT / "README.md").read_text()
  md = (ROOT / "docs" / "mnist_formulations" / "fid_vs_nfe.md").read_text()
  pivot = md.split("\n\n")[0].strip().splitlines()
  assert len(pivot) == 2 + 20 + 2 and "\n".join(pivot) in readme
  for name, column in (("ddpm", 2), ("vdm", 3), ("edm", 4)):
    results = json.loads((ROOT / "docs" / "mnist_formulations" / name / "results.json").read_text())
    fid = {r["spec"]: r["fid"] for r in results["rounds"]}
    for line in pivot[2:-2]:
      spec, cell = line.split("|")[1].strip().strip("`"), line.split("|")[column + 1].strip()
      assert cell == (f"{fid[spec]:.1f}" if spec in fid else "-"), (name, spec)


def test_readme_autoencoder_result_is_the_file_the_code_wrote():
  """The README's MNIST autoencoder PSNR, SE, MSE and scale factor are those of the
  committed checkpoint json (`latent.AutoencoderExperiment.on_checkpoint` wrote it)."""
  info = json.loads((ROOT / "docs" / "mnist_latent" / "autoencoder_step_003000.json").read_text())
  readme = (ROOT / "README.md").read_text()
  assert (f"PSNR **{info['recon_psnr']:.2f} dB ± {info['recon_psnr_se']:.2f}**" in readme
          and f"MSE {info['recon_mse']:.4f}" in readme
          and f"latent scale factor {info['scale_factor']:.3f}" in readme), info


def test_readme_guidance_tables_are_the_files_the_code_wrote():
  """The README's guidance tables (class labels, text prompts; the latent text model and
  its pixel twin) are `diffusion.figures`'s guidance.md of the committed results.json,
  line for line (`viz.tables.guidance_markdown`)."""
  from diffusion.viz import tables  # pylint: disable=g-import-not-at-top
  readme = (ROOT / "README.md").read_text()
  for name in ("mnist_guidance/class", "mnist_guidance/text", "mnist_latent/text",
               "mnist_latent/pixel_text"):
    folder = ROOT / "docs" / name
    results = json.loads((folder / "results.json").read_text())
    md = (folder / "guidance.md").read_text()
    assert md == tables.guidance_markdown(results)
    assert md.strip() in readme, name
