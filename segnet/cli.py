"""What every stage script shares: logging to stderr and a clean exit on bad input."""

import logging
import sys
from collections.abc import Callable

from segnet.errors import DatasetError

log = logging.getLogger("segnet")


def run_stage(main: Callable[[], None]) -> None:
    """Runs a stage's main(); a DatasetError or ValueError becomes one clear line and exit status 1.

    Anything else is a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        main()
    except (DatasetError, ValueError) as error:
        log.error("%s", error)
        sys.exit(1)
