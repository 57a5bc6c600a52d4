"""Failover: the primary goes away, a replica is promoted, writes go on; no primary at all → 57P03;
two primaries (split-brain) → writes refused.

Each test builds its own throwaway two-node PostgreSQL 15 cluster (`cluster`): node-a, a primary
initdb'ed under <repo>/.lab/failover-<random>/a on 127.0.0.1:16470, and node-b, its streaming
replica (pg_basebackup -R) on 16471; trust authentication on loopback, role `tidegate`, database
`market`. The lab is never touched. Tidegate gets both nodes in one region (roles are discovered)
with fast health probes. Servers are stopped and the directory removed after the test, also when it
fails; directories left by a killed run are cleaned up before the next one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tgharness as h

pytestmark = pytest.mark.requires_tidegate("failover, health probes, SQLSTATE 57P03, split-brain")

PGBIN = Path(os.environ.get("TIDEGATE_PGBIN", "/usr/lib/postgresql/15/bin"))
PORT_A = int(os.environ.get("TIDEGATE_TEST_FAILOVER_PORT", "16470"))
PORT_B = PORT_A + 1
CLUSTER_ROOT = h.REPO / ".lab"

TABLE = "tg_failover"


# --------------------------------------------------------------------------------------------
# the throwaway cluster


def as_pg(cmd: list[str]) -> list[str]:
    """Run a server-side binary as the postgres OS user (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def run_pg(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run(as_pg(cmd), capture_output=True, text=True, timeout=timeout, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@dataclass
class PgNode:
    name: str
    port: int
    datadir: Path

    @property
    def log(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    def dsn(self, db: str = "postgres", **extra: Any) -> str:
        return h.make_dsn(h.HOST, self.port, db, "postgres", **extra)

    def pg_ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return run_pg([str(PGBIN / "pg_ctl"), "-D", str(self.datadir), *args], timeout)

    def start(self) -> None:
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.log))

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def promote(self) -> None:
        self.pg_ctl("promote", "-w", "-t", "60")

    def running(self) -> bool:
        r = subprocess.run(as_pg([str(PGBIN / "pg_ctl"), "-D", str(self.datadir), "status"]),
                           capture_output=True, timeout=30, cwd="/")
        return r.returncode == 0

    def sql(self, query: str, params: Any = None, db: str = "postgres") -> list[tuple]:
        with psycopg.connect(self.dsn(db, connect_timeout=3), autocommit=True) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Cluster:
    root: Path
    a: PgNode
    b: PgNode

    def tidegate_overrides(self, failover_wait_ms: int = 20000) -> dict[str, Any]:
        regions = {"dc1": {"fallback": [], "nodes": {
            "node-a": {"host": h.HOST, "port": self.a.port},
            "node-b": {"host": h.HOST, "port": self.b.port}}}}
        return h.regions_overrides(
            region="dc1", regions=regions,
            routing={"failover_wait_ms": failover_wait_ms},
            health={"interval_ms": 200, "timeout_ms": 1000, "up_after": 2})

    def logs(self) -> str:
        return "\n".join(f"---- {n.name} ({n.log}) ----\n{n.log_tail()}" for n in (self.a, self.b))


NODE_CONF = """
# tidegate failover test
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
wal_level = replica
hot_standby = on
max_wal_senders = 5
wal_keep_size = '128MB'
max_connections = 100
shared_buffers = '32MB'
fsync = off
wal_retrieve_retry_interval = '500ms'
password_encryption = 'scram-sha-256'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
"""

HBA = """# tidegate failover test: trust on loopback for everything, including replication
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


def _pg_write(path: Path, text: str, append: bool = False) -> None:
    with open(path, "a" if append else "w") as f:
        f.write(text)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _stop_leftover(datadir: Path) -> None:
    if (datadir / "postmaster.pid").exists():
        subprocess.run(as_pg([str(PGBIN / "pg_ctl"), "-D", str(datadir), "stop", "-m", "immediate",
                              "-w", "-t", "30"]), capture_output=True, timeout=60, cwd="/")


def _clean_leftovers() -> None:
    if not CLUSTER_ROOT.is_dir():
        return
    for d in CLUSTER_ROOT.glob("failover-*"):
        for sub in ("a", "b"):
            _stop_leftover(d / sub)
        shutil.rmtree(d, ignore_errors=True)


def _streaming(a: PgNode) -> bool:
    try:
        return a.sql("select count(*) from pg_stat_replication where state = 'streaming'")[0][0] == 1
    except psycopg.Error:
        return False


def _build_cluster(write_after_backup: bool):
    if not (PGBIN / "initdb").exists() or not (PGBIN / "pg_basebackup").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PGBIN} (set TIDEGATE_PGBIN)")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root but runuser is not available to run PostgreSQL as postgres")
        import pwd
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' OS user to run PostgreSQL")
    _clean_leftovers()
    busy = [p for p in (PORT_A, PORT_B) if not h.port_free(p)]
    if busy:
        pytest.skip(f"ports {busy} are in use (set TIDEGATE_TEST_FAILOVER_PORT to another base)")
    root = CLUSTER_ROOT / f"failover-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(root)]).returncode:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"the postgres OS user cannot reach {root} (run scripts/lab up once: it "
                        f"grants search permission on the path)")
    a = PgNode("node-a", PORT_A, root / "a")
    b = PgNode("node-b", PORT_B, root / "b")
    c = Cluster(root, a, b)
    try:
        run_pg([str(PGBIN / "initdb"), "-D", str(a.datadir), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--no-locale", "--no-sync"])
        _pg_write(a.datadir / "postgresql.conf", NODE_CONF.format(port=a.port), append=True)
        _pg_write(a.datadir / "pg_hba.conf", HBA)
        a.start()
        a.sql("set password_encryption = 'scram-sha-256'; "
              "create role tidegate login password 'tidegate'")
        a.sql("create database market owner tidegate")
        with psycopg.connect(h.make_dsn(h.HOST, a.port, "market", "tidegate"), autocommit=True) as m:
            m.execute(f"create table {TABLE} (id bigserial primary key, w int not null, "
                      f"n int not null, at timestamptz not null default clock_timestamp())")
        run_pg([str(PGBIN / "pg_basebackup"), "-h", h.HOST, "-p", str(a.port), "-U", "postgres",
                "-w", "-D", str(b.datadir), "-R", "-X", "stream", "-c", "fast", "--no-sync"])
        _pg_write(b.datadir / "postgresql.conf", f"port = {b.port}\n", append=True)
        b.start()
        assert h.wait_for(lambda: _streaming(a), 30, 0.1), \
            f"node-b is not streaming from node-a within 30 s:\n{c.logs()}"
        if write_after_backup:
            # pg_basebackup ends with a WAL segment switch: the idle primary then sits at a segment
            # boundary (see test_idle_replica_after_base_backup_serves_reads); move it past.
            a.sql(f"insert into {TABLE} (w, n) values (-1, 0)", db="market")
            lsn = a.sql("select pg_current_wal_lsn()::text")[0][0]
            assert h.wait_for(lambda: b.sql("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0],
                              30, 0.1), f"node-b did not replay {lsn}:\n{c.logs()}"
        yield c
    finally:
        for n in (b, a):
            _stop_leftover(n.datadir)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster():
    """The two-node cluster, with one write after the base backup."""
    yield from _build_cluster(write_after_backup=True)


@pytest.fixture
def fresh_cluster():
    """The two-node cluster exactly as pg_basebackup left it (primary idle at a WAL segment start)."""
    yield from _build_cluster(write_after_backup=False)


def read_port(proxy: h.Proxy) -> int | str:
    """The node serving a read on a fresh session (one that never wrote), or the error."""
    try:
        with psycopg.connect(proxy.dsn(connect_timeout=5), autocommit=True) as c:
            return c.execute("select inet_server_port()").fetchone()[0]
    except psycopg.Error as e:
        return err_text(e)


def start_tidegate(launch, cluster: Cluster, name: str, failover_wait_ms: int,
                   warm_up: bool = True) -> h.Proxy:
    """Tidegate on the cluster, both nodes up; with warm_up, `market` has been used (the function
    catalog is loaded on first use; until then statements go to the primary) and a fresh session's
    read lands on node-b."""
    p = launch(cluster.tidegate_overrides(failover_wait_ms), name)
    h.wait_nodes(p, {"node-a": ("primary", "up"), "node-b": ("replica", "up")}, timeout=15)
    if warm_up:
        with psycopg.connect(p.dsn(), autocommit=True) as c:
            c.execute("select 1")
        assert h.wait_for(lambda: read_port(p) == PORT_B, 10, 0.2), \
            f"reads of a fresh session do not go to node-b: {read_port(p)}; " \
            f"{h.nodes_summary(h.show_nodes(p))}"
    return p


INSERT = f"insert into {TABLE} (w, n) values (%s, %s) returning inet_server_port()"
CONNECTION_LOST = ("57P01", "57P02", "57P03", None)  # admin shutdown, crash, cannot connect, no SQLSTATE


def err_text(e: BaseException) -> str:
    state = getattr(e, "sqlstate", None)
    return f"{type(e).__name__} {state}: {str(e).strip()[:200]}"


# --------------------------------------------------------------------------------------------
# tests


def test_failover_to_promoted_replica(cluster, tidegate_instance):
    """Writers keep inserting through Tidegate; node-a stops (fast), node-b is promoted ~1 s later.
    Writes started after node-a was down wait for the new primary and succeed (no error within
    failover_wait_ms); only writes in flight while node-a shut down may fail, with a connection
    error. Every acknowledged row is on the new primary."""
    wait_ms = 20000
    p = start_tidegate(tidegate_instance, cluster, "failover", wait_ms)
    writers = 4
    stop = threading.Event()
    lock = threading.Lock()
    records: list[dict[str, Any]] = []

    def writer(w: int) -> None:
        conn = None
        n = 0
        while not stop.is_set():
            n += 1
            rec: dict[str, Any] = {"w": w, "n": n, "start": time.monotonic()}
            try:
                if conn is None:
                    rec["reconnect"] = True
                    conn = psycopg.connect(p.dsn(), autocommit=True)
                rec["port"] = conn.execute(INSERT, (w, n)).fetchone()[0]
                rec["ok"] = True
            except psycopg.Error as e:
                rec["ok"] = False
                rec["error"] = err_text(e)
                rec["sqlstate"] = getattr(e, "sqlstate", None)
                if conn is not None and (conn.closed or conn.broken):
                    conn.close()
                    conn = None
            rec["end"] = time.monotonic()
            with lock:
                records.append(rec)
            time.sleep(0.02)
        if conn is not None:
            conn.close()

    def fresh_write() -> None:
        rec: dict[str, Any] = {"w": 99, "n": 1, "start": time.monotonic(), "fresh": True}
        try:
            with psycopg.connect(p.dsn(), autocommit=True) as c:
                rec["port"] = c.execute(INSERT, (99, 1)).fetchone()[0]
                rec["ok"] = True
        except psycopg.Error as e:
            rec.update(ok=False, error=err_text(e), sqlstate=getattr(e, "sqlstate", None))
        rec["end"] = time.monotonic()
        with lock:
            records.append(rec)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True, name=f"writer-{w}")
               for w in range(writers)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        t_stop = time.monotonic()
        cluster.a.stop("fast")
        t_down = time.monotonic()
        # A new client's first write, started while there is no primary (the writers above are
        # typically all waiting inside a write that started before the stop returned).
        late = threading.Thread(target=fresh_write, daemon=True)
        late.start()
        time.sleep(1.0)
        t_promote = time.monotonic()
        cluster.b.promote()
        t_promoted = time.monotonic()

        def resumed() -> bool:
            with lock:
                return any(r["ok"] and r["port"] == PORT_B and r["start"] > t_promoted for r in records)

        h.wait_for(resumed, (wait_ms / 1000) + 5, 0.05)
        time.sleep(2.0)  # a little steady state on the new primary
    finally:
        stop.set()
        for t in threads + ([late] if "late" in locals() else []):
            t.join(wait_ms / 1000 + 10)
    hung = [t.name for t in threads if t.is_alive()]
    fresh = [r for r in records if r.get("fresh")]

    in_flight = [r for r in records if r["start"] < t_down]
    after = [r for r in records if r["start"] >= t_down]
    in_flight_errors = [r for r in in_flight if not r["ok"]]
    after_errors = [r for r in after if not r["ok"]]
    first_b = min((r["end"] for r in records if r["ok"] and r["port"] == PORT_B), default=None)
    waited = [r["end"] - r["start"] for r in records if r["ok"] and r["end"] > t_down]
    summary = (
        f"{len(records)} writes; stop took {t_down - t_stop:.2f} s, promote {t_promoted - t_promote:.2f} s; "
        f"first write on node-b {('%.2f s after the promote returned' % (first_b - t_promoted)) if first_b else 'never'}; "
        f"longest wait of a successful write {max(waited, default=0):.2f} s; "
        f"new client's write started after the stop: {fresh}; "
        f"{len(in_flight_errors)} errors of writes in flight at the stop "
        f"{[r['error'] for r in in_flight_errors[:5]]}; {len(after_errors)} errors after it")
    print(summary)
    assert not hung, f"writers hung: {hung}; {summary}"
    assert records and any(r["ok"] and r["port"] == PORT_A for r in in_flight), \
        f"no successful write on node-a before the stop; {summary}"
    assert not after_errors, (f"writes started after node-a was down failed: "
                              f"{[(round(r['start'] - t_down, 2), r['error']) for r in after_errors[:10]]}; "
                              f"{summary}\n{cluster.logs()}")
    bad_in_flight = [r for r in in_flight_errors if r["sqlstate"] not in CONNECTION_LOST
                     and not r["sqlstate"].startswith("08")]
    assert not bad_in_flight, f"in-flight writes failed with non-connection errors: " \
                              f"{[r['error'] for r in bad_in_flight[:5]]}; {summary}"
    assert len(fresh) == 1 and fresh[0]["ok"] and fresh[0]["port"] == PORT_B, \
        f"a new client's write started while there was no primary: {fresh}; {summary}"
    assert first_b is not None and first_b - t_promoted < 10, f"writes did not resume on node-b; {summary}"
    assert all(w < wait_ms / 1000 for w in waited), summary
    assert all(r["port"] == PORT_B for r in after if r["ok"] and r["start"] > t_promoted + 0.5), \
        f"a write after the promotion went elsewhere than node-b; {summary}"

    acked = {(r["w"], r["n"]) for r in records if r["ok"]}
    with psycopg.connect(h.make_dsn(h.HOST, PORT_B, "market", "tidegate"), autocommit=True) as c:
        have = set(c.execute(f"select w, n from {TABLE}").fetchall())
    lost = acked - have
    assert not lost, f"{len(lost)} acknowledged writes are not on the new primary: {sorted(lost)[:10]}"
    nodes = h.wait_nodes(p, {"node-a": (None, "down"), "node-b": ("primary", "up")}, timeout=10)
    print(h.nodes_summary(nodes))


def test_no_primary_gives_57P03(cluster, tidegate_instance):
    """node-a stops and nothing is promoted: after failover_wait_ms a write fails with 57P03 naming
    the missing primary; the session stays usable (reads go to node-b) and writes work again on the
    same session once node-a is back."""
    wait_ms = 1500
    p = start_tidegate(tidegate_instance, cluster, "no-primary", wait_ms)
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        assert c.execute(INSERT, (0, 1)).fetchone()[0] == PORT_A
        cluster.a.stop("fast")
        h.wait_nodes(p, {"node-a": (None, "down")}, timeout=10)
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            c.execute(INSERT, (0, 2))
        elapsed = time.monotonic() - t0
        e = ei.value
        print(f"write without a primary: {err_text(e)} after {elapsed:.2f} s")
        assert e.sqlstate == "57P03", err_text(e)
        assert "primary" in str(e).lower(), f"the message does not explain that no primary is available: {e}"
        assert wait_ms / 1000 - 0.2 <= elapsed <= wait_ms / 1000 + 3.0, \
            f"failed after {elapsed:.2f} s with failover_wait_ms {wait_ms}"
        assert not c.closed and not c.broken, "the session was closed by the 57P03 error"
        # Reads of a session that never wrote are served by the replica. (This session wrote just
        # before the primary went away; read-your-writes cannot place its reads without a primary.)
        got = read_port(p)
        assert got == PORT_B, f"a read of a new session without a primary: {got}"

        cluster.a.start()
        h.wait_nodes(p, {"node-a": ("primary", "up")}, timeout=15)
        assert c.execute(INSERT, (0, 3)).fetchone()[0] == PORT_A, "write after node-a came back"


def test_split_brain_refuses_writes(cluster, tidegate_instance):
    """node-b is promoted while node-a still runs: two nodes claim primary. Writes are refused with
    57P03 after failover_wait_ms, SHOW NODES shows both as primary and tidegate_split_brain is set;
    once node-a stops, writes go to node-b."""
    wait_ms = 1500
    p = start_tidegate(tidegate_instance, cluster, "split-brain", wait_ms)
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        assert c.execute(INSERT, (1, 1)).fetchone()[0] == PORT_A
        cluster.b.promote()
        nodes = h.wait_nodes(p, {"node-a": ("primary", None), "node-b": ("primary", None)}, timeout=10)
        print(h.nodes_summary(nodes))
        with pytest.raises(psycopg.Error) as ei:
            c.execute(INSERT, (1, 2))
        print(f"write during split-brain: {err_text(ei.value)}")
        assert ei.value.sqlstate == "57P03", err_text(ei.value)
        assert not c.broken
        status, _, body = h.http_get(*p.http, "/metrics")
        split = h.metric_samples(body.decode(), "tidegate_split_brain")
        assert split and max(v for _, v in split) >= 1, f"tidegate_split_brain during split-brain: {split}"

        cluster.a.stop("fast")
        h.wait_nodes(p, {"node-a": (None, "down"), "node-b": ("primary", "up")}, timeout=10)
        assert c.execute(INSERT, (1, 3)).fetchone()[0] == PORT_B
        status, _, body = h.http_get(*p.http, "/metrics")
        split = h.metric_samples(body.decode(), "tidegate_split_brain")
        assert split and max(v for _, v in split) == 0, f"tidegate_split_brain after node-a stopped: {split}"


def test_idle_replica_after_base_backup_serves_reads(fresh_cluster, tidegate_instance):
    """Right after pg_basebackup the idle primary sits at the start of a WAL segment and node-b has
    replayed everything: node-b must not count as lagging, and keeps serving reads (observed for
    4 s, well past routing.max_lag_ms = 1 s)."""
    a, b = fresh_cluster.a, fresh_cluster.b
    positions = a.sql("select pg_current_wal_lsn()::text, pg_current_wal_insert_lsn()::text")[0]
    replayed = b.sql("select pg_last_wal_replay_lsn()::text")[0][0]
    p = start_tidegate(tidegate_instance, fresh_cluster, "idle-replica", 1500, warm_up=False)
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        c.execute("select 1")  # the catalog load
    samples: list[Any] = []
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        samples.append(read_port(p))
        time.sleep(0.5)
    nodes = h.show_nodes(p)
    a_now = a.sql("select pg_current_wal_lsn()::text")[0][0]
    detail = (f"primary pg_current_wal_lsn/insert_lsn at start {positions}, now {a_now}; node-b "
              f"replayed {replayed}; SHOW NODES: node-a lsn {nodes['node-a']['lsn']}; node-b lsn "
              f"{nodes['node-b']['lsn']} state {nodes['node-b']['state']} lag_bytes "
              f"{nodes['node-b']['lag_bytes']} lag_seconds {nodes['node-b']['lag_seconds']}")
    print(f"fresh sessions' reads every 0.5 s: {samples}; {detail}")
    assert nodes["node-b"]["state"] == "up", f"the idle, caught-up replica is not up: {detail}"
    assert all(s == PORT_B for s in samples[2:]), \
        f"reads of fresh sessions, every 0.5 s: {samples}, expected node-b ({PORT_B}); {detail}"
