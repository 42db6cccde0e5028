"""Real servers for tests, started here on 127.0.0.1 and stopped by killing what was started: free
ports, a process tree's members, and a throwaway PostgreSQL cluster (:func:`postgres`)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# processes: free ports, descendants, stopping what we started


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id), from /proc."""
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(d.name)] = (int(fields[1]), int(fields[3]))
    return table


def tree_of(root: int) -> set[int]:
    """``root``, every process of its session, and all their descendants (Ray workers set up their own
    process groups, so a process-group kill alone would leave them)."""
    table = _proc_table()
    found = {root} | {pid for pid, (_, sid) in table.items() if sid == root}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= kids
        grew = bool(kids)
    return {p for p in found if p in table}


def stop_tree(root: int, grace_s: float = 5.0) -> None:
    pids = tree_of(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and "(Z)" not in _state(p)}
            if not pids:
                return
            time.sleep(0.2)


def environ_of(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with ({} when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"({stat[stat.rindex(')') + 2]})"
    except OSError:
        return "(Z)"


# ---------------------------------------------------------------------------------------------
# a throwaway PostgreSQL cluster


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why (for a test's skip reason)."""


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    db: str

    def uri(self, scheme: str = "postgresql+psycopg2") -> str:
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{self.db}"


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


@contextmanager
def postgres(user: str = "mlflow", db: str = "mlflow", password: str | None = None) -> Iterator[Postgres]:
    """A PostgreSQL cluster of its own on 127.0.0.1 (a free port, password auth, fsync off), with
    database ``db`` owned by ``user``; stopped and deleted on exit. Raises :class:`PostgresUnavailable`
    where PostgreSQL's binaries or psycopg2 (the driver MLflow's SQLAlchemy store uses) are missing."""
    try:
        import psycopg2  # noqa: F401 - the driver MLflow's SQLAlchemy store needs
    except ImportError:
        raise PostgresUnavailable(
            "psycopg2 is not installed (make installs it with the 'server' extra)"
        ) from None
    pg_bin = _pg_bin()
    if pg_bin is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; `make test` installs the "
            "OS package postgresql where apt-get can"
        )
    owner = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root and there is no 'postgres' user to run PostgreSQL as"
            ) from None
    password = password or secrets.token_hex(16)
    base = Path(tempfile.mkdtemp(prefix="mocopg-", dir="/tmp"))  # short: its Unix socket lives here
    (base / "pw").write_text(password)
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
        os.chown(base / "pw", owner.pw_uid, owner.pw_gid)
    as_owner = {"user": owner.pw_uid, "group": owner.pw_gid} if owner is not None else {}
    (port,) = free_ports(1)
    data = base / "data"
    started = False
    try:
        subprocess.run(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(data),
                "-U",
                user,
                f"--pwfile={base / 'pw'}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=base,
            **as_owner,
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} -c fsync=off"
        subprocess.run(
            [str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(base / "pg.log"), "-o", opts, "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=base,
            **as_owner,
        )
        started = True
        subprocess.run(
            [str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, db],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": password},
        )
        yield Postgres("127.0.0.1", port, user, password, db)
    finally:
        if started:
            subprocess.run(
                [str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
                cwd=base,
                **as_owner,
            )
        shutil.rmtree(base, ignore_errors=True)
