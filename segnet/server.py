"""The shared MLflow tracking server (`make server`, or `python -m segnet.server --folder DIR --port N`):
PostgreSQL and `mlflow server` on loopback, in the foreground until Ctrl-C (segnet.tracking.server)."""

import argparse
import logging
import signal
import sys
from pathlib import Path
from urllib.parse import unquote

import sqlalchemy

from segnet.errors import ServerError
from segnet.interrupt import raise_interrupt
from segnet.tracking.server import tracking_server

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segnet.server", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--folder",
        type=Path,
        default=Path(".mlflow-server"),
        help="holds the PostgreSQL cluster, its password file and the artifacts",
    )
    parser.add_argument("--port", type=int, default=5050, help="the MLflow server's port on 127.0.0.1")
    parser.add_argument("--postgres-port", type=int, default=5433, help="PostgreSQL's port on 127.0.0.1")
    parser.add_argument(
        "--database-uri",
        default=None,
        help="an existing database (postgresql://...) to use instead of a cluster in --folder",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # `kill` stops it as cleanly as Ctrl-C does: the server first, then the database. SIGINT too, explicitly:
    # a shell script's background job (`make server &`) starts with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_interrupt)
    try:
        with tracking_server(args.folder, args.port, args.postgres_port, args.database_uri or None) as server:
            log.info("MLflow tracking server ready: export MLFLOW_TRACKING_URI=%s (Ctrl-C stops it)", server.uri)
            database = unquote(sqlalchemy.make_url(server.backend_uri).render_as_string(hide_password=True))
            log.info("runs in %s, artifacts in %s", database, server.artifacts)
            status = server.process.wait()
            raise ServerError(f"mlflow server stopped by itself with exit status {status}")
    except KeyboardInterrupt:
        log.info("stopped")
    except ServerError as error:
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
