"""``python -m sftmix.cli``: the same as the ``sftmix`` command. Launched runs start their ranks
this way (``accelerate launch -m sftmix.cli train``)."""

import atexit
import os
import sys

from sftmix.cli import main

status = main()
if status == 0 and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
    # A rank of a launched run whose work is all saved and whose process group is released. The
    # interpreter's finalisation can still destroy a gloo worker thread that is joinable ("terminate
    # called without an active exception", SIGABRT), and the launcher then fails the whole run: a
    # successful rank leaves without finalisation, once its exit hooks have run (a tracker such as
    # wandb finishes its run in one; logging's flushes its handlers) and what it printed is out.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
sys.exit(status)
