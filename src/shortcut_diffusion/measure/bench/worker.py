"""One benchmark configuration in a fresh process: ``python -m shortcut_diffusion.measure.bench.worker JSON``.

Prints one JSON line with the measured row (peak memory is this process's own).
"""

import json
import sys

from shortcut_diffusion.measure.bench.cost import measure

if __name__ == "__main__":
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
