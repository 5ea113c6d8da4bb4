"""Maintainers: ship a finished run as a model that comes with the package.

    python scripts/ship_model.py runs/fashion-seed-b-20250101-120000 fashion ["how it was chosen"]

writes src/cnnlab/pretrained/NAME/ (or $CNNLAB_MODELS_DIR/NAME/), replacing a model of that name; the
optional third argument goes into its model card as "chosen".
"""

import sys
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.zoo import ship


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: {sys.argv[0]} RUN NAME [HOW-IT-WAS-CHOSEN]")
    try:
        folder = ship(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
    except CnnlabError as e:
        print(f"ship_model: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(folder)


if __name__ == "__main__":
    main()
