"""``python -m shortcut_diffusion`` is the ``sdo`` command (handy under ``accelerate launch -m``)."""

import sys

from shortcut_diffusion.cli import main

sys.exit(main())
