"""``python -m sftmix.cli``: the same as the ``sftmix`` command. Launched runs start their ranks
this way (``accelerate launch -m sftmix.cli train``)."""

import atexit
import logging
import os
import sys

from sftmix.cli import main

status = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1 and status == 0:
    # A rank of a launched run whose work is all saved and whose process group is released. The
    # interpreter's finalisation can still destroy a gloo worker thread that is joinable ("terminate
    # called without an active exception", SIGABRT), and the launcher then fails the whole run: a
    # successful rank leaves without finalisation, once its exit hooks have run (a tracker such as
    # wandb finishes its run in one) and what it printed and logged is out.
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
sys.exit(status)
