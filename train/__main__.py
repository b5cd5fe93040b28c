"""``python -m attnzoo.train`` (what ``torchrun ... -m attnzoo.train`` runs): ``attnzoo train``."""
import sys

from attnzoo.train.trainer import main

if __name__ == "__main__":
    sys.exit(main())
