"""Maintainers: ship a finished run as a model that comes with the package.

    python scripts/ship_model.py runs/fashion-seed-b-20250101-120000 fashion

writes src/cnnlab/pretrained/NAME/ (or $CNNLAB_MODELS_DIR/NAME/), replacing a model of that name.
"""

import sys
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.zoo import ship


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} RUN NAME")
    try:
        folder = ship(Path(sys.argv[1]), sys.argv[2])
    except CnnlabError as e:
        print(f"ship_model: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(folder)


if __name__ == "__main__":
    main()
