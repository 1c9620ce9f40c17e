"""Real services for tests: a one-node SLURM cluster and a PostgreSQL server.

Import the fixtures where they are needed (or from ``conftest.py``)::

    from tests.services import postgres_db_url, postgres_url, slurm_cluster, slurm_executor

- ``slurm_cluster`` (session): starts ``.ci/services/slurm.sh`` once per session and returns a
  :class:`SlurmCluster` (partition, node, ``executor(folder, **params)``).
- ``slurm_executor`` (function): a submitit ``AutoExecutor`` on that cluster whose job folder is
  under the test's ``tmp_path``.
- ``postgres_url`` (session): starts ``.ci/services/postgres.sh`` once per session and returns
  the SQLAlchemy URL of a database made fresh for this session (dropped at its end).
- ``postgres_db_url`` (function): the URL of a database made fresh for one test.

When a service cannot be started, the fixture skips with the reason, unless the environment
variable ``CI`` is set: CI must exercise the real services, so there it fails instead. The
services are left running after the session (the next session reuses them in ~2 s);
``.ci/run`` stops them on exit, and ``bash .ci/services/<name>.sh stop`` does by hand.

``MSS_PG_URL`` (a ``postgresql+psycopg2://`` URL of a role that may create databases) makes the
PostgreSQL fixtures use that server instead of starting one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / ".ci" / "services"
#: Starting from nothing installs Debian packages: allow for that, once.
START_TIMEOUT_S = 900


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(service: str, reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, because ``service`` could not be had."""
    if in_ci():
        pytest.fail(
            f"{service} is required under CI but could not be started: {reason}", pytrace=False
        )
    pytest.skip(f"{service} unavailable: {reason}")


def run_service_script(name: str, *args: str) -> str:
    """Run ``.ci/services/<name>.sh`` and return its stdout; raise RuntimeError with its output."""
    script = SERVICES / f"{name}.sh"
    try:
        proc = subprocess.run(
            ["bash", str(script), *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(
            f"{script} {' '.join(args)} did not finish in {START_TIMEOUT_S} s"
        ) from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"{script} {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


# --- SLURM ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmCluster:
    """The one-node test cluster: where to submit and how."""

    partition: str
    node: str
    #: Lines run by every job before Python starts: the repository on PYTHONPATH, so functions
    #: defined in test modules unpickle whatever the submitting process's working directory.
    setup: tuple[str, ...] = field(
        default=(f'export PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}"',),
    )

    def executor(self, folder: str | os.PathLike[str], **params: Any):
        """A submitit executor on this cluster writing its job files into ``folder``.

        ``params`` go to ``update_parameters`` (submitit's generic names such as
        ``timeout_min``, ``cpus_per_task``, ``slurm_array_parallelism``)."""
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        defaults: dict[str, Any] = {
            "slurm_partition": self.partition,
            "timeout_min": 5,
            "cpus_per_task": 1,
            "nodes": 1,
            "tasks_per_node": 1,
            "slurm_setup": list(self.setup),
        }
        executor.update_parameters(**{**defaults, **params})
        return executor


def _partition_idle(partition: str) -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(
        ["sinfo", "-h", "-p", partition, "-o", "%T"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    partition = os.environ.get("MSS_SLURM_PARTITION", "debug")
    try:
        import submitit  # noqa: F401
    except ImportError:
        unavailable("SLURM", "submitit is not installed (pip install submitit)")
    if os.geteuid() == 0:
        try:
            run_service_script("slurm", "start")
        except RuntimeError as e:
            unavailable("SLURM", str(e))
    elif not _partition_idle(partition):
        unavailable("SLURM", f"not root, so {SERVICES / 'slurm.sh'} cannot start the test cluster")
    if not _partition_idle(partition):
        unavailable("SLURM", f"slurm.sh succeeded but partition {partition!r} has no usable node")
    return SlurmCluster(partition=partition, node=socket.gethostname().split(".")[0])


@pytest.fixture
def slurm_executor(slurm_cluster: SlurmCluster, tmp_path: Path):
    """A submitit executor on the test cluster, job folder ``tmp_path / "submitit"``."""
    return slurm_cluster.executor(tmp_path / "submitit")


# --- PostgreSQL -------------------------------------------------------------------------------


def _connect(url: str):
    """A psycopg2 connection (autocommit) from a SQLAlchemy URL."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = psycopg2.connect(
        host=u.host,
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        dbname=u.database,
        connect_timeout=10,
    )
    conn.autocommit = True
    return conn


@dataclass(frozen=True)
class PostgresServer:
    """A server URL whose role may create databases; ``fresh_database`` makes one."""

    url: str

    def fresh_database(self, prefix: str = "mss_t") -> str:
        from sqlalchemy.engine import make_url

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = _connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        conn = _connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        unavailable("PostgreSQL", "psycopg2 is not installed (pip install psycopg2-binary)")
    url = os.environ.get("MSS_PG_URL", "")
    if not url:
        if os.geteuid() != 0:
            unavailable("PostgreSQL", "not root and MSS_PG_URL is not set")
        try:
            out = run_service_script("postgres", "start")
        except RuntimeError as e:
            unavailable("PostgreSQL", str(e))
        url = out.strip().splitlines()[-1]
    try:
        _connect(url).close()
    except Exception as e:  # noqa: BLE001 - any driver error means "no server"
        unavailable("PostgreSQL", f"cannot connect to {url}: {e}")
    return PostgresServer(url)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a database made fresh for this test session, dropped at its end."""
    url = postgres_server.fresh_database("mss_session")
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a database made fresh for one test, dropped after it."""
    url = postgres_server.fresh_database()
    yield url
    postgres_server.drop_database(url)
