"""``python -m diffusion.classify``: train the feature classifier of `--mode eval`
(the code is `diffusion.eval.classifier`)."""
from diffusion.eval import classifier

if __name__ == "__main__":
  classifier.main()
