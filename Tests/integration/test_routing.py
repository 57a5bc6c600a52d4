"""Routing between the primary and read replicas in regions, on the lab: primary 15432,
us-east-1 15433 (region us-east, the instance's own), eu-west-1 15434 (region eu-west).

One Tidegate with the lab's regional config (`tgharness.regions_overrides()`) serves the module
(`routed`); it starts after the module's functions and table exist on the primary (the function
catalog is loaded when a database is first used) and once the replicas have replayed them. The node
that served a statement is `inet_server_port()`. Every test starts with SHOW NODES showing all
three nodes up. Tests that change the lab (apply delay on a replica, a stopped replica, DRAIN) undo
it in teardown and wait until the node is back.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest

import tgharness as h

pytestmark = pytest.mark.requires_tidegate(
    "read/write routing, regions, SHOW NODES / SHOW REGIONS, DRAIN, routing metrics")

PRIMARY, US_EAST, EU_WEST = h.PRIMARY_PORT, h.US_EAST_PORT, h.EU_WEST_PORT
PORT_NAMES = {port: name for name, port in h.LAB_NODE_PORTS.items()}
ALL_UP = {"primary": ("primary", "up"), "us-east-1": ("replica", "up"), "eu-west-1": ("replica", "up")}
EU = {"options": "-c tidegate.region=eu-west"}  # connection option: the client's region
TRUTHY = {"t", "true", "yes", "y", "1", "on"}

# Created on the primary before the module's Tidegate starts.
TABLE = h.unique_name("tg_it_route")
VOLATILE_FN = h.unique_name("tg_it_vol")
STABLE_FN = h.unique_name("tg_it_stable")
IMMUTABLE_FN = h.unique_name("tg_it_immutable")

RYW_ITERATIONS = int(os.environ.get("TIDEGATE_TEST_RYW_ITERATIONS", "10000"))
LAB_SCRIPT = h.REPO / "scripts" / "lab"


# --------------------------------------------------------------------------------------------
# helpers


def node_dsn(port: int, db: str = "postgres", **extra: Any) -> str:
    """A lab node directly, as the superuser (trust on loopback)."""
    return h.make_dsn(h.HOST, port, db, "postgres", **extra)


def lab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB_SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def lab_streaming() -> bool:
    return lab("status", timeout=60).returncode == 0


def primary_lsn() -> str:
    with psycopg.connect(node_dsn(PRIMARY), autocommit=True) as c:
        return c.execute("select pg_current_wal_lsn()::text").fetchone()[0]


def replayed(port: int, lsn: str) -> bool:
    try:
        with psycopg.connect(node_dsn(port, connect_timeout=3), autocommit=True) as c:
            return bool(c.execute("select coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)",
                                  (lsn,)).fetchone()[0])
    except psycopg.Error:
        return False


def wait_replicas_caught_up(ports: tuple[int, ...] = (US_EAST, EU_WEST), timeout: float = 60) -> None:
    lsn = primary_lsn()
    for port in ports:
        assert h.wait_for(lambda: replayed(port, lsn), timeout, 0.1), \
            f"replica {port} has not replayed the primary's {lsn} within {timeout:.0f} s"


def dist(c: Counter) -> str:
    return ", ".join(f"{PORT_NAMES.get(p, p)}×{n}" for p, n in c.most_common()) or "(nothing)"


def port_of(conn: psycopg.Connection, sql: str = "select inet_server_port()", params: Any = None,
            **kw: Any) -> int:
    row = conn.execute(sql, params, **kw).fetchone()
    return int(row[-1])


def served(proxy: h.Proxy, sql: str = "select inet_server_port()", n: int = 10,
           fresh: bool = False, **conn_kw: Any) -> Counter:
    """Ports that served n runs of a single-row statement whose last column is inet_server_port(),
    on one connection (or a fresh connection per run)."""
    c: Counter = Counter()
    conn = None
    try:
        for _ in range(n):
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                conn = psycopg.connect(proxy.dsn(**conn_kw), autocommit=True)
            c[port_of(conn, sql)] += 1
    finally:
        if conn is not None:
            conn.close()
    return c


def wait_served_only(proxy: h.Proxy, port: int, timeout: float = 10, **conn_kw: Any) -> Counter:
    """Poll until 5 reads on a fresh connection all land on `port`; the last distribution."""
    deadline = time.monotonic() + timeout
    while True:
        got = served(proxy, n=5, **conn_kw)
        if set(got) == {port} or time.monotonic() >= deadline:
            return got
        time.sleep(0.2)


def run_mode(conn: psycopg.Connection, mode: str, sql: str, value: int) -> tuple:
    """One statement in a protocol mode; `sql` has one `{v}` placeholder for an int value.
    simple: Query message (literal inlined); extended: unnamed Parse/Bind/Execute with a parameter;
    prepared: named server-side statement; binary: binary results; pipeline: psycopg pipeline."""
    if mode == "simple":
        return conn.execute(sql.format(v=int(value))).fetchone()
    q = sql.format(v="%s")
    cur = conn.cursor(binary=(mode == "binary"))
    if mode == "pipeline":
        with conn.pipeline():
            cur.execute(q, (value,), prepare=False)
        return cur.fetchone()
    return cur.execute(q, (value,), prepare=(mode == "prepared")).fetchone()


def routed_by_node(proxy: h.Proxy) -> Counter:
    status, _, body = h.http_get(*proxy.http, "/metrics")
    assert status == 200, status
    c: Counter = Counter()
    for labels, value in h.metric_samples(body.decode(), "tidegate_routed_total"):
        c[labels.get("node", "")] += value
    return c


def set_apply_delay(port: int, delay: str | None) -> None:
    """recovery_min_apply_delay on a replica (ALTER SYSTEM + reload); None resets it."""
    with psycopg.connect(node_dsn(port), autocommit=True) as c:
        if delay is None:
            c.execute("alter system reset recovery_min_apply_delay")
        else:
            c.execute(f"alter system set recovery_min_apply_delay = '{delay}'")
        c.execute("select pg_reload_conf()")
    want = delay or "0"

    def applied() -> bool:  # a new backend reads the reloaded file
        with psycopg.connect(node_dsn(port), autocommit=True) as c:
            return c.execute("show recovery_min_apply_delay").fetchone()[0] == want

    assert h.wait_for(applied, 10, 0.1), f"recovery_min_apply_delay on {port} is not {want} after reload"


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def routing_lab(lab: None):
    """The lab with both replicas streaming, the module's functions and table on the primary and
    replayed by both replicas; dropped at the end."""
    if not LAB_SCRIPT.exists():
        pytest.skip(f"{LAB_SCRIPT} not found")
    if not lab_streaming():
        r = lab("up", timeout=300)
        if r.returncode != 0 or not lab_streaming():
            pytest.skip(f"the lab replicas are not streaming (scripts/lab up: {r.stdout[-500:]}"
                        f"{r.stderr[-500:]})")
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        c.execute(f"create table {TABLE} (id bigserial primary key, v int not null, note text)")
        c.execute(f"insert into {TABLE} (v, note) values (0, 'seed')")
        c.execute(f"create function {VOLATILE_FN}(x int) returns int language sql volatile "
                  f"as 'select x + 1'")
        c.execute(f"create function {STABLE_FN}(x int) returns int language sql stable "
                  f"as 'select x + 2'")
        c.execute(f"create function {IMMUTABLE_FN}(x int) returns int language sql immutable "
                  f"as 'select x + 3'")
    try:
        wait_replicas_caught_up()
        yield
    finally:
        with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
            c.execute(f"drop table if exists {TABLE}")
            for fn in (VOLATILE_FN, STABLE_FN, IMMUTABLE_FN):
                c.execute(f"drop function if exists {fn}(int)")


def start_routed(launch, name: str, **kw: Any) -> h.Proxy:
    """A Tidegate with the lab's regions; returns once all nodes are up and `market` is in use: the
    function catalog is loaded when a database is first used, and until then statements go to the
    primary (as writes, so that session's later reads too, by read-your-writes)."""
    p = launch(h.regions_overrides(**kw), name)
    h.wait_nodes(p, ALL_UP, timeout=15)
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        c.execute("select 1")
    got = wait_served_only(p, US_EAST, timeout=10)
    assert set(got) == {US_EAST}, f"{name}: reads of a new session after warm-up: {dist(got)}"
    return p


@pytest.fixture(scope="module")
def routed(routing_lab: None, module_tidegate) -> h.Proxy:
    """The module's Tidegate: the lab's regions, this instance in us-east."""
    return start_routed(module_tidegate, "routing")


@pytest.fixture(autouse=True)
def all_nodes_up(routed: h.Proxy) -> None:
    h.wait_nodes(routed, ALL_UP, timeout=30)


@pytest.fixture
def us_east_lagging(routed: h.Proxy):
    """us-east-1 replays 30 s late (recovery_min_apply_delay) and a write on the primary makes the
    lag visible; SHOW NODES shows it lagging. Teardown resets the delay and waits until it caught up
    and is up again in SHOW NODES."""
    try:
        set_apply_delay(US_EAST, "30s")
        with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
            c.execute(f"insert into {TABLE} (v, note) values (-1, 'lag marker')")
        marker = primary_lsn()
        assert h.wait_for(lambda: replayed(EU_WEST, marker), 10, 0.1), "eu-west-1 did not replay the marker"
        assert not replayed(US_EAST, marker), "us-east-1 replayed the marker despite the apply delay"
        nodes = h.wait_nodes(routed, {"us-east-1": ("replica", "lagging")}, timeout=15)
        yield nodes
    finally:
        set_apply_delay(US_EAST, None)
        wait_replicas_caught_up((US_EAST,), timeout=60)
        h.wait_nodes(routed, ALL_UP, timeout=20)


@pytest.fixture
def restart_us_east(routed: h.Proxy):
    """Teardown: `scripts/lab start us-east`, wait until both replicas stream and Tidegate shows
    us-east-1 up again."""
    yield
    r = lab("start", "us-east", timeout=300)
    assert r.returncode == 0, f"scripts/lab start us-east failed:\n{r.stdout}\n{r.stderr}"
    assert h.wait_for(lab_streaming, 60, 0.5), f"replicas not streaming:\n{lab('status').stdout}"
    h.wait_nodes(routed, ALL_UP, timeout=20)


# --------------------------------------------------------------------------------------------
# 1. Reads to the regional replica, writes to the primary, in every protocol mode


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared", "binary", "pipeline"])
def test_reads_regional_writes_primary(routed, mode):
    read = "select {v}::int, inet_server_port()"
    table_read = f"select count(*) + 0 * {{v}}::int, inet_server_port() from {TABLE}"
    write = f"insert into {TABLE} (v, note) values ({{v}}, '{mode}') returning v, inet_server_port()"
    for region, kw, want in (("us-east", {}, US_EAST), ("eu-west", EU, EU_WEST)):
        reads: Counter = Counter()
        writes: Counter = Counter()
        # Reads and writes on separate sessions: after a write, read-your-writes keeps a session's
        # reads on the primary for a while.
        with psycopg.connect(routed.dsn(**kw), autocommit=True,
                             prepare_threshold=h.NEVER_AUTO_PREPARE) as r, \
                psycopg.connect(routed.dsn(**kw), autocommit=True,
                                prepare_threshold=h.NEVER_AUTO_PREPARE) as w:
            for i in range(10):
                row = run_mode(r, mode, read if i % 2 else table_read, i)
                if i % 2:
                    assert row[0] == i, row
                reads[int(row[-1])] += 1
                row = run_mode(w, mode, write, 1000 + i)
                assert row[0] == 1000 + i, row
                writes[int(row[-1])] += 1
        print(f"[{mode}] region {region}: reads {dist(reads)}; writes {dist(writes)}")
        assert set(reads) == {want}, \
            f"[{mode}] reads of a {region} client: expected all on {PORT_NAMES[want]}, got {dist(reads)}"
        assert set(writes) == {PRIMARY}, \
            f"[{mode}] writes of a {region} client: expected all on the primary, got {dist(writes)}"


def test_routed_metrics(routed):
    before = routed_by_node(routed)
    with psycopg.connect(routed.dsn(), autocommit=True) as c:
        for _ in range(5):
            assert port_of(c) == US_EAST
    with psycopg.connect(routed.dsn(), autocommit=True) as c:
        for i in range(3):
            assert port_of(c, f"insert into {TABLE} (v) values (%s) returning inet_server_port()", (i,)) \
                == PRIMARY
    after = routed_by_node(routed)
    delta = {n: after[n] - before.get(n, 0) for n in after}
    assert delta.get("us-east-1", 0) >= 5, f"tidegate_routed_total per node, change: {delta}"
    assert delta.get("primary", 0) >= 3, f"tidegate_routed_total per node, change: {delta}"
    _, _, body = h.http_get(*routed.http, "/metrics")
    split = h.metric_samples(body.decode(), "tidegate_split_brain")
    assert split and all(v == 0 for _, v in split), f"tidegate_split_brain: {split}"


# --------------------------------------------------------------------------------------------
# 2. Write-shaped statements go to the primary; read-only function calls stay on a replica


PRIMARY_CASES = {
    "data-modifying CTE": f"with ins as (insert into {TABLE} (v, note) values (7, 'cte') returning v) "
                          f"select v, inet_server_port() from ins",
    "FOR UPDATE": f"select v, inet_server_port() from {TABLE} where note = 'seed' for update",
    "FOR SHARE": f"select v, inet_server_port() from {TABLE} where note = 'seed' for share",
    "volatile user function": f"select {VOLATILE_FN}(1), inet_server_port()",
    "nextval": f"select nextval('{TABLE}_id_seq'), inet_server_port()",
}
REPLICA_CASES = {
    "stable user function": f"select {STABLE_FN}(1), inet_server_port()",
    "immutable user function": f"select {IMMUTABLE_FN}(1), inet_server_port()",
    "random()": "select random(), inet_server_port()",
    "stable builtin now()": "select now(), inet_server_port()",
}


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "prepared"])
def test_statement_shapes(routed, prepare):
    bad = []
    seen = {}
    for what, sql in {**PRIMARY_CASES, **REPLICA_CASES}.items():
        want = PRIMARY if what in PRIMARY_CASES else US_EAST
        # a fresh session per case: a write would keep the session's later reads on the primary
        with psycopg.connect(routed.dsn(), autocommit=True, prepare_threshold=h.NEVER_AUTO_PREPARE) as c:
            try:
                got: Any = port_of(c, sql, prepare=prepare) if prepare else port_of(c, sql)
            except psycopg.Error as e:
                got = f"{type(e).__name__} {e.sqlstate}: {str(e).strip()[:120]}"
        seen[what] = PORT_NAMES.get(got, got)
        if got != want:
            bad.append(f"{what}: expected {PORT_NAMES[want]}, got {PORT_NAMES.get(got, got)}")
    print(f"served by: {seen}")
    assert not bad, "misrouted:\n  " + "\n  ".join(bad)


def test_safe_functions_stay_on_replica(routing_lab, tidegate_instance):
    p = start_routed(tidegate_instance, "safe-functions",
                     routing={"safe_functions": [VOLATILE_FN]})
    with psycopg.connect(p.dsn(), autocommit=True) as c:
        got = Counter(port_of(c, f"select {VOLATILE_FN}(%s), inet_server_port()", (i,)) for i in range(5))
        assert set(got) == {US_EAST}, \
            f"{VOLATILE_FN} is in routing.safe_functions, expected us-east-1, got {dist(got)}"
        other = port_of(c, f"select nextval('{TABLE}_id_seq'), inet_server_port()")
        assert other == PRIMARY, f"nextval (not allow-listed) went to {PORT_NAMES.get(other, other)}"


# --------------------------------------------------------------------------------------------
# 3. Hints and transactions


def test_hints(routed):
    cases = [
        ({}, "/* tidegate: route=primary */ select inet_server_port()", PRIMARY),
        ({}, "/* tidegate: region=eu-west */ select inet_server_port()", EU_WEST),
        (EU, "/* tidegate: region=us-east */ select inet_server_port()", US_EAST),
        (EU, "/* tidegate: route=primary */ select inet_server_port()", PRIMARY),
        ({}, "/* tidegate: route=replica, region=eu-west */ select inet_server_port()", EU_WEST),
        ({}, "/* tidegate: route=replica region=eu-west max_lag=5000ms */ select inet_server_port()",
         EU_WEST),
        ({}, "/* tidegate: route=replica */ select inet_server_port()", US_EAST),
        ({}, "/* tidegate: max_lag=500ms */ select inet_server_port()", US_EAST),
        ({}, "select inet_server_port()", US_EAST),  # no hint
        # a hint cannot send a write to a replica
        ({}, f"/* tidegate: route=replica */ insert into {TABLE} (v) values (9) "
             f"returning inet_server_port()", PRIMARY),
    ]
    bad = []
    for kw, sql, want in cases:
        for prepare in (False, True):
            with psycopg.connect(routed.dsn(**kw), autocommit=True,
                                 prepare_threshold=h.NEVER_AUTO_PREPARE) as c:
                try:
                    got: Any = port_of(c, sql, prepare=True) if prepare else port_of(c, sql)
                except psycopg.Error as e:
                    got = f"{type(e).__name__} {e.sqlstate}: {str(e).strip()[:120]}"
            if got != want:
                bad.append(f"{'prepared' if prepare else 'simple'} {kw or ''} {sql!r}: "
                           f"expected {PORT_NAMES[want]}, got {PORT_NAMES.get(got, got)}")
    assert not bad, "hints not followed:\n  " + "\n  ".join(bad)


def txn_ports(proxy: h.Proxy, begin: str, **conn_kw: Any) -> list[int]:
    """Ports serving the statements of one explicit transaction on a fresh session (a read-write
    transaction counts as a write for read-your-writes, so cases do not share a session)."""
    with psycopg.connect(proxy.dsn(**conn_kw), autocommit=True) as c:
        c.execute(begin)
        ports = [port_of(c) for _ in range(3)]
        ports.append(port_of(c, f"select count(*), inet_server_port() from {TABLE}"))
        c.execute("commit")
    return ports


@pytest.mark.parametrize("begin,region,want", [
    ("begin read only", "us-east", US_EAST),
    ("start transaction read only", "us-east", US_EAST),
    ("begin isolation level repeatable read read only", "us-east", US_EAST),
    ("begin read only", "eu-west", EU_WEST),
    ("begin", "us-east", PRIMARY),
    ("begin read write", "us-east", PRIMARY),
    ("begin", "eu-west", PRIMARY),
])
def test_transactions(routed, begin, region, want):
    got = txn_ports(routed, begin, **(EU if region == "eu-west" else {}))
    assert set(got) == {want}, (f"{begin!r} transaction of a {region} client ran on "
                                f"{[PORT_NAMES.get(p, p) for p in got]}, expected {PORT_NAMES[want]}")


def test_psycopg_transactions(routed):
    # psycopg's own transactions: read_only=True sends BEGIN READ ONLY
    with psycopg.connect(routed.dsn(), autocommit=False) as c:
        c.read_only = True
        got = [port_of(c, "select %s::int, inet_server_port()", (i,)) for i in range(3)]
        c.commit()
        assert set(got) == {US_EAST}, f"psycopg read_only transaction ran on {dist(Counter(got))}"
    with psycopg.connect(routed.dsn(), autocommit=False) as c:
        got = [port_of(c, "select %s::int, inet_server_port()", (i,)) for i in range(3)]
        c.commit()
        assert set(got) == {PRIMARY}, f"psycopg read-write transaction ran on {dist(Counter(got))}"


# --------------------------------------------------------------------------------------------
# 4. A lagging replica is avoided


def test_lagging_replica_avoided(routed, us_east_lagging):
    row = us_east_lagging["us-east-1"]
    if row.get("lag_seconds"):
        assert float(row["lag_seconds"]) > 1.0, f"SHOW NODES us-east-1 lagging but lag_seconds: {row}"
    got = served(routed, n=20)
    fresh = served(routed, n=5, fresh=True)
    print(f"us-east client reads with us-east-1 lagging: {dist(got)}; fresh sessions: {dist(fresh)}")
    assert US_EAST not in got and US_EAST not in fresh, \
        f"reads went to the lagging us-east-1: {dist(got)} / {dist(fresh)}"
    assert set(got) | set(fresh) <= {EU_WEST, PRIMARY}, dist(got + fresh)
    eu = served(routed, n=5, **EU)
    assert set(eu) == {EU_WEST}, f"eu-west client with us-east-1 lagging: {dist(eu)}"
    nodes = h.show_nodes(routed)
    assert nodes["us-east-1"]["state"] == "lagging", h.nodes_summary(nodes)
    assert nodes["eu-west-1"]["state"] == "up", h.nodes_summary(nodes)


# --------------------------------------------------------------------------------------------
# 5. Read-your-writes


def test_read_your_writes(routed, us_east_lagging):
    ins = f"insert into {TABLE} (v, note) values (%s, 'ryw') returning id"
    sel = f"select (select v from {TABLE} where id = %s), inet_server_port()"
    nodes: Counter = Counter()
    misses = []
    t0 = time.monotonic()
    with psycopg.connect(routed.dsn(application_name="tg-it-ryw"), autocommit=True,
                         prepare_threshold=h.NEVER_AUTO_PREPARE) as c:
        cur = c.cursor()
        for i in range(RYW_ITERATIONS):
            rid = cur.execute(ins, (i,), prepare=True).fetchone()[0]
            v, port = cur.execute(sel, (rid,), prepare=True).fetchone()
            nodes[port] += 1
            if v != i and len(misses) < 20:
                misses.append((i, rid, v, PORT_NAMES.get(port, port)))
            elif v != i:
                misses.append(None)
    elapsed = time.monotonic() - t0
    print(f"read-your-writes: {RYW_ITERATIONS} INSERT+SELECT pairs in {elapsed:.1f} s; "
          f"reads served by {dist(nodes)}")
    assert not misses, (f"{len(misses)} of {RYW_ITERATIONS} reads did not see the session's own "
                        f"row (first: (i, id, seen, node) {[m for m in misses if m][:10]}); "
                        f"reads served by {dist(nodes)}")
    assert US_EAST not in nodes, f"reads went to the lagging us-east-1: {dist(nodes)}"


# --------------------------------------------------------------------------------------------
# 6. A replica stops under read load


def test_replica_stop_under_read_load(routed, restart_us_east):
    clients = 32
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []
    events: list[tuple[float, int]] = []  # (time, port)
    ready = threading.Barrier(clients + 1, timeout=60)
    t_start = time.monotonic()

    def reader(i: int) -> None:
        try:
            conn = psycopg.connect(routed.dsn(application_name=f"tg-it-reader-{i}"), autocommit=True,
                                   prepare_threshold=h.NEVER_AUTO_PREPARE)
        except psycopg.Error as e:
            with lock:
                errors.append(f"client {i} could not connect: {type(e).__name__} {e.sqlstate}: {e}")
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            conn.close()
            return
        n = 0
        try:
            while not stop.is_set():
                n += 1
                kind = "series" if n % 3 == 0 else "prepared" if i % 2 else "simple"
                try:
                    if kind == "series":
                        port = port_of(conn, "select count(*), inet_server_port() "
                                             "from generate_series(1, 20000)")
                    elif kind == "prepared":
                        port = port_of(conn, "select %s::int, inet_server_port()", (n,), prepare=True)
                    else:
                        port = port_of(conn)
                    with lock:
                        events.append((time.monotonic(), port))
                except psycopg.Error as e:
                    with lock:
                        errors.append(f"{time.monotonic() - t_start:.3f} s client {i} ({kind}): "
                                      f"{type(e).__name__} {e.sqlstate}: {str(e).strip()[:160]}"
                                      f"{' (connection closed)' if conn.closed or conn.broken else ''}")
                    if conn.closed or conn.broken:
                        conn.close()
                        conn = psycopg.connect(routed.dsn(), autocommit=True,
                                               prepare_threshold=h.NEVER_AUTO_PREPARE)
        finally:
            conn.close()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True, name=f"reader-{i}")
               for i in range(clients)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        stop.set()
        pytest.fail(f"not all {clients} readers could connect: {errors[:3]}")
    try:
        time.sleep(2.0)
        t_stop = time.monotonic()
        r = lab("stop", "us-east", timeout=120)
        t_stopped = time.monotonic()
        assert r.returncode == 0, f"scripts/lab stop us-east failed:\n{r.stdout}\n{r.stderr}"
        time.sleep(4.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    hung = [t.name for t in threads if t.is_alive()]
    before = Counter(p for t, p in events if t < t_stop)
    during = Counter(p for t, p in events if t_stop <= t < t_stopped)
    after = Counter(p for t, p in events if t >= t_stopped)
    summary = (f"{len(events)} reads by {clients} clients; stop at {t_stop - t_start:.3f} s, "
               f"done at {t_stopped - t_start:.3f} s; before the stop: {dist(before)}; during "
               f"({t_stopped - t_stop:.2f} s): {dist(during)}; after: {dist(after)}; "
               f"{len(errors)} errors")
    print(summary)
    assert not hung, f"clients hung: {hung[:5]}; {summary}"
    assert not errors, f"client-visible errors: {errors[:10]}; {summary}"
    assert before.get(US_EAST, 0) > 0, f"no reads on us-east-1 before the stop; {summary}"
    assert after and US_EAST not in after, summary
    nodes = h.show_nodes(routed)
    assert nodes["us-east-1"]["state"] == "down", h.nodes_summary(nodes)


# --------------------------------------------------------------------------------------------
# 7. DRAIN / UNDRAIN, SHOW REGIONS / SHOW NODES


def test_drain_undrain(routed):
    with psycopg.connect(routed.dsn(), autocommit=True) as existing:
        assert port_of(existing) == US_EAST
        try:
            tag, _, _ = h.admin_query(routed, "DRAIN us-east-1")
            print(f"DRAIN command tag: {tag!r}")
            nodes = h.wait_nodes(routed, {"us-east-1": (None, "draining")}, timeout=5)
            drained = wait_served_only(routed, EU_WEST, timeout=5)
            old = Counter(port_of(existing) for _ in range(10))
            assert set(drained) == {EU_WEST}, f"new session while us-east-1 is drained: {dist(drained)}"
            assert US_EAST not in old, f"existing session while us-east-1 is drained: {dist(old)}"
            assert nodes["us-east-1"]["role"] == "replica", h.nodes_summary(nodes)
        finally:
            h.admin_query(routed, "UNDRAIN us-east-1")
        back = wait_served_only(routed, US_EAST, timeout=10)
        assert set(back) == {US_EAST}, f"after UNDRAIN: {dist(back)}"
        old = Counter(port_of(existing) for _ in range(5))
        assert set(old) == {US_EAST}, f"existing session after UNDRAIN: {dist(old)}"
    h.wait_nodes(routed, ALL_UP, timeout=5)


def test_drain_unknown_node(routed):
    with pytest.raises(psycopg.Error) as ei:
        h.admin_query(routed, "DRAIN no-such-node")
    assert ei.value.sqlstate is not None and not ei.value.sqlstate.startswith("08"), ei.value
    h.wait_nodes(routed, ALL_UP, timeout=2)


def test_show_nodes_and_regions(routed):
    nodes = h.show_nodes(routed)
    cols = ["node", "region", "host", "port", "role", "state", "lsn", "receive_lsn", "lag_bytes",
            "lag_seconds", "in_flight", "probe_ms", "error"]
    missing = [c for c in cols if c not in next(iter(nodes.values()))]
    assert not missing, f"SHOW NODES lacks columns {missing}: {h.nodes_summary(nodes)}"
    assert set(nodes) == set(h.LAB_NODE_PORTS), nodes
    for name, port in h.LAB_NODE_PORTS.items():
        row = nodes[name]
        assert int(row["port"]) == port and row["host"] == h.HOST, row
        assert row["region"] == ("eu-west" if name == "eu-west-1" else "us-east"), row
        assert row["lsn"], f"no lsn for {name}: {row}"
    assert nodes["primary"]["role"] == "primary"

    _, names, rows = h.admin_query(routed, "SHOW REGIONS")
    for c in ("region", "local", "fallback", "nodes", "primary", "replicas_up"):
        assert c in names, f"SHOW REGIONS columns: {names}"
    regions = {str(r["region"]): {k: "" if v is None else str(v) for k, v in r.items()}
               for r in (dict(zip(names, row)) for row in rows)}
    assert set(regions) == {"us-east", "eu-west"}, regions
    us, eu = regions["us-east"], regions["eu-west"]
    assert us["local"].lower() in TRUTHY and eu["local"].lower() not in TRUTHY, regions
    assert "eu-west" in us["fallback"] and "us-east" in eu["fallback"], regions
    assert us["nodes"] == "2" or ("primary" in us["nodes"] and "us-east-1" in us["nodes"]), regions
    assert eu["nodes"] == "1" or "eu-west-1" in eu["nodes"], regions
    assert us["primary"] == "primary" and eu["primary"] in ("", "-", "none"), regions
    assert int(us["replicas_up"]) == 1 and int(eu["replicas_up"]) == 1, regions


# --------------------------------------------------------------------------------------------
# 8. The function catalog follows RELOAD; pipelining; what the client is told; session pooling


def test_function_created_later_is_known_after_reload(routed):
    """A function created after the database's catalog was loaded is unknown, so a read calling it
    goes to the primary; RELOAD reads pg_proc again and a STABLE function then stays on a replica."""
    fn = h.unique_name("tg_it_late")
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        c.execute(f"create function {fn}(x int) returns int language sql stable as 'select x'")
    try:
        wait_replicas_caught_up()
        sql = f"select {fn}(1), inet_server_port()"
        before = served(routed, sql, n=3, fresh=True)
        assert set(before) == {PRIMARY}, f"unknown function before RELOAD: {dist(before)}"
        status, _, _ = h.admin_query(routed, "RELOAD")
        assert status == "RELOAD", status
        # The catalog loads again on the next use; the first read waits for it.
        after = served(routed, sql, n=5, fresh=True)
        assert set(after) == {US_EAST}, f"STABLE function after RELOAD: {dist(after)}"
    finally:
        with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
            c.execute(f"drop function if exists {fn}(int)")


def test_write_pipelined_after_replica_read(routed):
    """A read and a write sent together (pipeline). With a Sync between them they are two
    transactions: the read runs on the replica, the write waits for it and runs on the primary. With
    no Sync between them they are one implicit transaction, so both run on the primary. Answers come
    back in order either way."""
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        with conn.pipeline() as p:
            read = conn.execute("select 1, inet_server_port()")
            p.sync()
            write = conn.execute(f"insert into {TABLE} (v, note) values (%s, 'pipelined') "
                                 f"returning v, inet_server_port()", (4242,))
            p.sync()
            # After its own write, the session reads from the primary (read-your-writes).
            read_again = conn.execute("select 2, inet_server_port()")
        assert read.fetchone() == (1, US_EAST)
        assert write.fetchone() == (4242, PRIMARY)
        assert read_again.fetchone() == (2, PRIMARY)
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            read = conn.execute("select 3, inet_server_port()")
            write = conn.execute(f"insert into {TABLE} (v, note) values (%s, 'one batch') "
                                 f"returning v, inet_server_port()", (4343,))
        assert read.fetchone() == (3, PRIMARY)
        assert write.fetchone() == (4343, PRIMARY)


def test_client_is_not_told_it_is_on_a_standby(routed):
    """in_hot_standby stays what the login reported (off) although reads run on replicas."""
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        assert conn.info.parameter_status("in_hot_standby") == "off"
        assert port_of(conn) == US_EAST
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.info.parameter_status("in_hot_standby") == "off"


def test_unknown_region_or_route_option_is_refused(routed):
    for options, needle in (("-c tidegate.region=mars", "mars"), ("-c tidegate.route=sideways", "sideways"),
                            ("-c tidegate.colour=blue", "tidegate.colour")):
        with pytest.raises(psycopg.OperationalError) as ei:
            psycopg.connect(routed.dsn(options=options), autocommit=True)
        assert needle in str(ei.value), (options, str(ei.value))
    # The region option of a configured region works (tested above); so does route=primary.
    with psycopg.connect(routed.dsn(options="-c tidegate.route=primary"), autocommit=True) as conn:
        assert {port_of(conn) for _ in range(3)} == {PRIMARY}


def test_session_pooling_pins_to_the_first_statements_node(routing_lab, tidegate_instance):
    """Session pooling keeps a client on the node of its first statement: a read there means the
    session is on a replica (writes then fail as on any standby); `-c tidegate.route=primary` puts
    the session on the primary."""
    s = tidegate_instance({**h.regions_overrides(), "pool.mode": "session"}, "session-pinned")
    h.wait_nodes(s, ALL_UP, timeout=15)
    with psycopg.connect(s.dsn(), autocommit=True) as warm:
        warm.execute("select 1")
    with psycopg.connect(s.dsn(), autocommit=True) as conn:
        first = port_of(conn)
        assert first == US_EAST, f"a session's first read: {first}"
        assert {port_of(conn) for _ in range(5)} == {US_EAST}
        with pytest.raises(psycopg.Error) as ei:
            conn.execute(f"insert into {TABLE} (v, note) values (1, 'session on a replica')")
        assert ei.value.sqlstate == "25006", ei.value  # read-only: the session is on the replica
    with psycopg.connect(s.dsn(options="-c tidegate.route=primary"), autocommit=True) as conn:
        assert port_of(conn) == PRIMARY
        v = conn.execute(f"insert into {TABLE} (v, note) values (7, 'session on the primary') "
                         f"returning v").fetchone()
        assert v == (7,)
        assert {port_of(conn) for _ in range(3)} == {PRIMARY}
