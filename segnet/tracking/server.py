"""A shared MLflow tracking server with a PostgreSQL database, on loopback only (`make server`).

The server (`python -m segnet.server`) keeps everything in one folder (default `.mlflow-server/`):

    postgres/data/  the PostgreSQL cluster (owned by the `postgres` user when started as root)
    postgres/       the cluster's log and unix socket
    pgpass          the database password, readable only by the user who started the server
    artifacts/      run artifacts; the server proxies them, so clients need only its URL
    server.lock     held while a server runs on the folder: a second one is refused

It starts PostgreSQL on 127.0.0.1, then `mlflow server` on 127.0.0.1 in the foreground, and stops both on
Ctrl-C or SIGTERM. Runs survive restarts: the next start reuses the cluster. With `--database-uri` the
server uses that database instead and starts no PostgreSQL of its own.
"""

import contextlib
import fcntl
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import psycopg
import sqlalchemy

from segnet.errors import ServerError, TrackingError
from segnet.tracking.runs import check_server

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ROLE = "mlflow"
DATABASE = "mlflow"
# PostgreSQL refuses to run as root; as root, the cluster belongs to the user Debian's package creates.
SERVICE_USER = "postgres"


def postgres_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: found on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if installed:
        return installed[-1].parent
    raise ServerError(
        "PostgreSQL's initdb is neither on PATH nor under /usr/lib/postgresql: install PostgreSQL "
        "(Debian: apt-get install postgresql) or pass the URI of an existing database (--database-uri)"
    )


def check_port_free(port: int, what: str) -> None:
    """Raises, naming `what`, when something already listens on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        # As servers do: a port whose last connections linger in TIME_WAIT is free, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            raise ServerError(f"{HOST}:{port} for {what} is taken ({error.strerror}): choose another port") from None


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL cluster kept in `folder`, served on 127.0.0.1:`port`, with one role and database `mlflow`.

    The role authenticates with a random password (scram-sha-256), so other users of a shared machine
    cannot reach the runs through the loopback port. Clients read it from `passfile`, named in the URI.
    """

    folder: Path
    port: int
    bin_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def passfile(self) -> Path:
        return self.folder / "pgpass"

    def uri(self, database: str = DATABASE) -> str:
        """A SQLAlchemy and libpq URI without the password: libpq reads it from `passfile`."""
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{database}?passfile={quote(str(self.passfile), safe='/')}"

    def _run(self, program: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / program), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise ServerError(f"{program} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
        return result

    def init(self) -> None:
        """Creates the cluster and its password, unless the folder holds one already."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
        if os.geteuid() == 0:
            self._hand_over(self.run_dir)
        password = secrets.token_urlsafe(32)
        # Written first: a cluster whose password nobody kept would be unusable.
        self.passfile.touch(mode=0o600)
        self.passfile.write_text(f"{HOST}:*:*:{ROLE}:{password}\n")
        # initdb reads the password from a file: a command line is visible to every user in `ps`.
        initial = self.run_dir / "initial-password"
        initial.touch(mode=0o600)
        initial.write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(initial, SERVICE_USER)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                ROLE,
                "--auth=scram-sha-256",
                f"--pwfile={initial}",
                "-E",
                "UTF8",
                "--locale=C",
            )
        finally:
            initial.unlink(missing_ok=True)
        log.info("created a PostgreSQL cluster in %s", self.data_dir)

    def _hand_over(self, folder: Path) -> None:
        """Gives `folder` to the service user, and checks that it can reach it through the folders above."""
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise ServerError(
                f"PostgreSQL refuses to run as root, and there is no user {SERVICE_USER!r} to run it as "
                "(Debian's postgresql package creates one): run as another user or pass --database-uri"
            ) from None
        shutil.chown(folder, SERVICE_USER, SERVICE_USER)
        if subprocess.run(["runuser", "-u", SERVICE_USER, "--", "test", "-w", str(folder)]).returncode != 0:
            raise ServerError(
                f"user {SERVICE_USER!r}, which runs PostgreSQL for root, cannot reach {folder}: every folder "
                "above it must be searchable by others; choose a folder elsewhere"
            )

    def running(self) -> bool:
        # pg_ctl status: 0 running, 3 not running, 4 no cluster.
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def start(self) -> None:
        """Starts the server on 127.0.0.1 only, with its socket in the cluster's folder, and waits for it."""
        if self.running():
            # Left behind by a start that was killed outright; it may be on another port.
            log.warning("restarting the PostgreSQL server left running in %s", self.data_dir)
            self.stop()
        check_port_free(self.port, "PostgreSQL")
        options = f"-c listen_addresses={HOST} -p {self.port} -k {shlex.quote(str(self.run_dir))}"
        logfile = self.run_dir / "postgres.log"
        try:
            self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(logfile), "-w", "-t", "60", "-o", options)
        except ServerError as error:
            tail = logfile.read_text(errors="replace").splitlines()[-5:] if logfile.exists() else []
            raise ServerError("\n".join([str(error), *tail])) from None
        log.info("PostgreSQL listening on %s:%d", HOST, self.port)

    def stop(self) -> None:
        """Stops the server: fast mode ends open sessions and rolls back their transactions."""
        if self.running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def create_database(self) -> None:
        """Creates the `mlflow` database unless it exists; MLflow creates its tables in it on first start."""
        try:
            # Autocommit: CREATE DATABASE cannot run inside a transaction.
            with psycopg.connect(self.uri("postgres"), autocommit=True) as connection:
                if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                    connection.execute(f"CREATE DATABASE {DATABASE}")
        except psycopg.Error as error:
            raise ServerError(f"PostgreSQL on {HOST}:{self.port}: {str(error).strip()}") from None


def check_database(uri: str) -> None:
    """Fails fast, naming the problem, when a PostgreSQL `uri` does not accept a connection.

    `mlflow server` would retry a database that cannot be reached for minutes before giving up.
    Other databases (MySQL, SQLite) are left for MLflow to check.
    """
    scheme, _, rest = uri.partition("://")
    if scheme.split("+")[0] not in ("postgresql", "postgres"):
        return
    try:
        psycopg.connect(f"postgresql://{rest}", connect_timeout=10).close()
    except psycopg.Error as error:
        shown = unquote(sqlalchemy.make_url(uri).render_as_string(hide_password=True))
        raise ServerError(f"the database {shown} does not accept a connection: {str(error).strip()}") from None


@dataclass(frozen=True)
class TrackingServer:
    """A running tracking server: `uri` is what clients set as MLFLOW_TRACKING_URI."""

    uri: str
    backend_uri: str
    artifacts: Path
    process: subprocess.Popen


def start_mlflow(backend_uri: str, artifacts: Path, port: int, log_file: Path | None = None) -> subprocess.Popen:
    """Starts `mlflow server` on 127.0.0.1:`port` in its own process group, serving `artifacts` itself.

    One worker: stage runs make a few requests a second, and each worker is a process with its own memory
    and database connections.
    """
    check_port_free(port, "the MLflow server")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # MLflow's job runner (GenAI evaluation and scheduled trace tasks, which no stage uses) would add seven
    # processes beside the server, and they outlast a SIGTERM by half a minute.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    output = open(log_file, "ab") if log_file else None  # noqa: SIM115 - the child keeps writing after we return
    try:
        # Its own session: Ctrl-C in the terminal reaches only us, and we stop it after the work in flight.
        return subprocess.Popen(
            command,
            start_new_session=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
    finally:
        if output:
            output.close()


def wait_until_healthy(uri: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Waits until the server at `uri` answers its health check; it first creates or upgrades its tables."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerError(f"mlflow server stopped with exit status {process.returncode} before answering")
        try:
            check_server(uri, timeout=2.0)
            return
        except TrackingError:
            if time.monotonic() > deadline:
                raise ServerError(f"mlflow server at {uri} did not answer within {timeout:.0f} s") from None
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the process and its workers, SIGKILL to whatever is left after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def claim_folder(folder: Path) -> Iterator[None]:
    """Holds `folder` for one server: a second one on the same folder would take the running cluster for one
    left behind by a killed start, and stop it under the first server.

    The claim is an exclusive lock on `folder/server.lock` that the kernel drops when this process ends,
    however it ends; the file says which process holds it.

    Raises:
        ServerError: Another process holds the folder.
    """
    lock_path = Path(folder) / "server.lock"
    try:
        # Not through a link someone planted there: as root, truncating it would truncate what it points to.
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise ServerError(
            f"{lock_path}: cannot be opened ({error.strerror}); start the server as the user who "
            "owns the folder, or give it another folder"
        ) from None
    with open(descriptor, "r+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock.read().strip() or "unknown"
            raise ServerError(
                f"{folder}: already served by process {holder}; stop that server first, or give this one another folder"
            ) from None
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


@contextlib.contextmanager
def tracking_server(
    folder: Path, port: int, postgres_port: int, database_uri: str | None = None, log_file: Path | None = None
) -> Iterator[TrackingServer]:
    """Runs PostgreSQL (unless `database_uri` names a database) and `mlflow server`, and stops what it started.

    Args:
        folder: Holds the cluster, its password file and the artifacts; created if missing.
        port: The MLflow server's port on 127.0.0.1.
        postgres_port: PostgreSQL's port on 127.0.0.1.
        database_uri: An existing database (SQLAlchemy URI) to use instead of a cluster in `folder`.
        log_file: Where the MLflow server's output goes (default: this process's stdout and stderr).
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    check_port_free(port, "the MLflow server")  # before starting a database it would then have to stop
    with contextlib.ExitStack() as started:
        started.enter_context(claim_folder(folder))
        if database_uri is None:
            postgres = Postgres(folder, postgres_port, postgres_bin_dir())
            postgres.init()
            postgres.start()
            started.callback(postgres.stop)
            postgres.create_database()
            database_uri = postgres.uri()
        else:
            check_database(database_uri)
        artifacts = folder / "artifacts"
        artifacts.mkdir(exist_ok=True)
        process = start_mlflow(database_uri, artifacts, port, log_file)
        started.callback(stop_process_group, process)
        uri = f"http://{HOST}:{port}"
        wait_until_healthy(uri, process)
        yield TrackingServer(uri=uri, backend_uri=database_uri, artifacts=artifacts, process=process)
