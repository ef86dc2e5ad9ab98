"""Shared plumbing of scripts/bench-sampling-cost and scripts/soak (Python 3 standard library).

Throwaway PostgreSQL clusters on free loopback ports, child processes that are always
stopped (by pid, never by name), HTTP GETs, /proc readings and markdown helpers. Nothing
here touches a server, port or process that the calling script did not start.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PG_BIN_CANDIDATES = ["/usr/lib/postgresql/15/bin"]
FORBIDDEN_PORTS = {5432, 9187}
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    raise SystemExit(f"error: {msg}")


def pg_bindir() -> Path:
    for d in PG_BIN_CANDIDATES:
        if Path(d, "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
    if out.returncode == 0 and Path(out.stdout.strip(), "initdb").exists():
        return Path(out.stdout.strip())
    die("PostgreSQL 15 server binaries (initdb, pg_ctl) not found; apt-get install postgresql-15")
    raise AssertionError


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (never 5432 or 9187)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port
    die("no free port")
    raise AssertionError


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB; (0, 0) when it is gone."""
    vals = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in vals:
                vals[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return vals["VmRSS"], vals["VmHWM"]


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far, in ms; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of the line (11 and 12 after the command).
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def http_get(url: str, timeout: float = 10.0, headers: dict | None = None) -> tuple[int, bytes, float]:
    """(status, body, seconds); status 0 when no HTTP answer came (refused, reset, timeout)."""
    req = urllib.request.Request(url, headers=headers or {})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback only)
            body = r.read()
            return r.status, body, time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read() or b"", time.monotonic() - t0
    except (OSError, urllib.error.URLError):
        return 0, b"", time.monotonic() - t0


def wait_for(what: str, check, timeout: float, interval: float = 0.5):
    """Polls `check()` until it returns a truthy value; dies after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            die(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def poll_until(check, timeout: float, interval: float = 0.5) -> bool:
    """Polls `check()` until it is truthy (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def metric_values(body: str, name: str) -> list[tuple[str, float]]:
    """[(labels, value)] of every sample of metric `name` (exact name) in an exposition."""
    out = []
    for line in body.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest.startswith("{"):
            labels, _, val = rest[1:].partition("} ")
        elif rest.startswith(" "):
            labels, val = "", rest[1:]
        else:
            continue
        try:
            out.append((labels, float(val.split()[0])))
        except (ValueError, IndexError):
            pass
    return out


def label(labels: str, key: str) -> str:
    m = re.search(rf'(?:^|,){key}="([^"]*)"', labels)
    return m.group(1) if m else ""


def fmt_ms(ms: float) -> str:
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def ratio(a: float, b: float) -> str:
    if not b:
        return "n/a"
    return f"×{a / b:.2f}"


class Processes:
    """Every child process a script starts; `stop_all` ends them by pid, newest first."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], log_path: Path, env: dict | None = None,
              stdin=subprocess.DEVNULL) -> subprocess.Popen:
        logf = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=stdin,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        logf.close()
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for _name, p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C, so every `finally` cleans up."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


class Cluster:
    """A throwaway PostgreSQL 15 cluster in `root/data`, TCP on 127.0.0.1:`port`, trust auth.

    initdb/pg_ctl run as the `postgres` OS user (the server refuses root); clients connect
    over TCP as any role.
    """

    def __init__(self, root: Path, settings: dict[str, str]) -> None:
        self.bindir = pg_bindir()
        self.root = root
        self.data = root / "data"
        self.logfile = root / "postgres.log"
        self.port = free_port()
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        self._as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"], timeout=120)
        conf = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(root),
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            "pg_stat_statements.track_planning": "on",
            "pg_stat_statements.max": "10000",
            **settings,
        }
        with open(self.data / "postgresql.auto.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = '{v}'\n")

    def _as_postgres(self, cmd: list[str], timeout: float, check: bool = True):
        full = ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            die(f"{' '.join(cmd[:2])} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return r

    def pg_ctl(self, *args: str, timeout: float = 120, check: bool = True):
        return self._as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                                  str(self.logfile), "-t", str(int(timeout)), *args],
                                 timeout=timeout + 10, check=check)

    def start(self) -> None:
        self.pg_ctl("-w", "start")

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def server_pids(self) -> list[int]:
        """Every live process of this cluster: the postmaster and its children, including
        orphans of a killed postmaster (their working directory is the data directory)."""
        pids = []
        target = str(self.data.resolve())
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if os.readlink(d / "cwd") == target:
                    pids.append(int(d.name))
            except OSError:
                continue
        return pids

    def backends_of(self, role: str) -> int:
        """Server processes serving `role` (from their process titles, so also the ones still in
        authentication or waiting for a lock at connection start; never blocks)."""
        n = 0
        prefix = f"postgres: {role} "
        for pid in self.server_pids():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if title.startswith(prefix):
                n += 1
        return n

    def accepting(self) -> bool:
        r = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-t", "2"], capture_output=True, check=False)
        return r.returncode == 0

    def kill_orphans(self, timeout: float = 20.0) -> int:
        """After the postmaster died: waits for its orphaned children to exit on their own
        (they notice the postmaster's death), then SIGKILLs the rest. Returns how many were
        killed."""
        deadline = time.monotonic() + timeout
        while self.server_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.server_pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for("orphaned server processes to exit", lambda: not self.server_pids(), 15, 0.2)
        return len(left)

    def destroy(self, keep: bool = False) -> None:
        if self.data.exists() and self.postmaster_pid():
            self.pg_ctl("-m", "immediate", "stop", timeout=30, check=False)
        pm = self.postmaster_pid()
        if pm:
            try:
                os.kill(pm, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.data.exists():
            self.kill_orphans(timeout=5)
        if not keep:
            log(f"removing {self.root}")
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, user: str = "postgres", db: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def psql(self, sql: str, db: str = "postgres", user: str = "postgres", timeout: float = 600,
             sep: str = "\x1f", rsep: str = "\n", check: bool = True, file: Path | None = None) -> str:
        cmd = [str(self.bindir / "psql") if (self.bindir / "psql").exists() else "psql", "-X", "-q",
               "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U", user,
               "-d", db, "-A", "-t", "-F", sep, "-R", rsep]
        cmd += ["-f", str(file)] if file else ["-c", sql]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                           env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        if check and r.returncode != 0:
            die(f"psql failed: {r.stderr.strip()[:2000]}\nSQL: {sql[:300] or file}")
        return r.stdout


def make_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def pgpulse_binary(arg: str | None) -> Path:
    """--pgpulse, else the release build under CARGO_TARGET_DIR or target/."""
    cands = [Path(arg)] if arg else []
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(Path(os.environ["CARGO_TARGET_DIR"], "release", "pgpulse"))
    cands.append(REPO / "target" / "release" / "pgpulse")
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c.resolve()
    die("pgpulse release binary not found: run `cargo build --release` (CARGO_TARGET_DIR is "
        "honoured) or pass --pgpulse PATH")
    raise AssertionError


def pgpulse_commit() -> str:
    """The last commit that changed what pgpulse runs (not the scripts)."""
    r = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cs", "--", "src", "queries.yaml",
                        "migrations", "Cargo.toml", "Cargo.lock"], capture_output=True, text=True, check=False)
    return r.stdout.strip() or "?"


def trade_schema(cluster: Cluster, db: str) -> None:
    """The reference trade-engine schema and its sample data, as the demo and benches load it."""
    ex = REPO / "examples" / "trade-engine"
    cluster.psql("", db=db, file=ex / "schema.sql")
    cluster.psql("", db=db, file=ex / "seed_data.sql")


def relations_in_public(cluster: Cluster, db: str) -> int:
    return int(cluster.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
                            "c.relnamespace WHERE n.nspname = 'public'", db=db).strip())


def add_partitions(cluster: Cluster, db: str, target: int, copies: int = 5) -> int:
    """Adds `copies` pairs of time-range partitioned tables shaped like the trade engine's
    orders (by month) and trades (by day), each partition with its TOAST table and three
    indexes, each table with a DEFAULT partition (scripts/trading-shape.sql, as
    benches/sampling_cost.rs builds them), bringing the relations in `public` to about
    `target`. Returns the final count."""
    base = relations_in_public(cluster, db)
    # 4 relations in `public` per partition; per copy about 20 more (parents, partitioned
    # indexes, DEFAULT partitions, identity sequences).
    partitions = max(2 * copies, (target - base - 20 * copies) // 4)
    cluster.psql("", db=db, file=REPO / "scripts" / "trading-shape.sql")
    cluster.psql(f"CALL bench_trading_shape({copies}, {partitions})", db=db, timeout=3600)
    return relations_in_public(cluster, db)
