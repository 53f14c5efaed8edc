"""What every stage script shares: logging to stderr and a clean exit on bad input."""

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from segnet.errors import DatasetError
from segnet.interrupt import raise_interrupt

log = logging.getLogger("segnet")


def run_stage(main: Callable[[], None]) -> None:
    """Runs a stage's main(), turning the failures a user can cause into one clear line and an exit status.

    A DatasetError or ValueError exits with 1, an interrupt (Ctrl-C, SIGTERM) with 130. Anything else is a
    bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Python's default SIGTERM ends the process on the spot, leaving the stage's MLflow run RUNNING forever;
    # as an interrupt it ends the run as KILLED. Training replaces this with its own polite stop while it runs.
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        main()
    except (DatasetError, ValueError) as error:
        log.error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        # 130 = 128 + SIGINT, the shell's code for a command stopped by Ctrl-C.
        # A plain Ctrl-C has no message; a stopped training says where its checkpoint is.
        log.error("interrupted: %s", str(interrupt) or "stopped by the user")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def stage_paths(usage: str) -> list[Path]:
    """The paths a stage script was given, as many as its usage line ("python -m stages.NAME A B") names.

    dvc.yaml always gives them; this is for a stage run by hand (as torchrun runs `stages.train`), which
    would otherwise fail on an unpacking error or an IndexError that names nothing.
    """
    names, given = usage.split()[3:], sys.argv[1:]
    if len(given) != len(names):
        raise ValueError(f"usage: {usage} (got {len(given)} argument(s); dvc.yaml shows them for each stage)")
    return [Path(argument) for argument in given]
