"""``python -m diffusion.figures``: the diagnostic pictures of a workdir
(the code is `diffusion.viz.figures`)."""
from diffusion.viz import figures

if __name__ == "__main__":
  figures.main()
