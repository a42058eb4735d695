"""``python -m webapp.jobs work DATA_DIR | watch [DATA_DIR] | list DATA_DIR``: the Teach
training runner (``webapp.training.runner``; the queue is ``webapp.training.jobs``).  Kept
as a module of its own so that the command, the process the server spawns and the
Kubernetes runner's command stay what they were."""

import sys

from webapp.training.runner import main

if __name__ == "__main__":
    sys.exit(main())
