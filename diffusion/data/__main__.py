"""``python -m diffusion.data prepare|where ...`` (`diffusion.data.prepare`)."""
import sys

from diffusion.data import prepare

if __name__ == "__main__":
  sys.exit(prepare.main(sys.argv[1:]))
