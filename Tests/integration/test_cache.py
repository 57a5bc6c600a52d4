"""The result cache on the lab (real PostgreSQL, real Redis): repeat reads of market-data relations are
answered from the cache with the bytes the server sent; writes through Tidegate invalidate what they
touch before the client sees them acknowledged; keys keep roles and output settings apart; what must
not be cached is not; Redis going away costs no query.

Each module run gets a scratch database migrated by `tidegate migrate`, sample ticks, and Tidegate
instances of its own with a key prefix of their own in the lab Redis. The replication listener is off
here (test_cache_listener.py covers writes that bypass Tidegate)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql as pgsql
import pytest

import tgharness as h

pytestmark = pytest.mark.requires_tidegate("the result cache")

SYMBOLS = ["AAPL", "MSFT", "NVDA", "SECRET"]
START = datetime(2026, 11, 2, tzinfo=timezone.utc)
DAYS = 2
OHLCV = ("SELECT time_bucket('1 minute', ts) AS bucket, first(price, ts) AS open, max(price) AS high, "
         "min(price) AS low, last(price, ts) AS close, sum(size) AS volume FROM ticks "
         "WHERE symbol = %s AND ts >= %s AND ts < %s GROUP BY 1 ORDER BY 1")


def cache_overrides(database: str, prefix: str, **extra) -> dict:
    overrides = {
        "cache.enabled": True,
        "cache.redis.host": h.HOST,
        "cache.redis.port": h.REDIS_PORT,
        "cache.key_prefix": prefix,
        "cache.listener.enabled": False,
        "relations.ticks.rewrite": False,
        "storage.maintenance_interval_ms": 0,
    }
    overrides.update(extra)
    return overrides


def cache_stats(proxy: h.Proxy) -> dict:
    _, names, rows = h.admin_query(proxy, "SHOW CACHE")
    return dict(zip(names, rows[0]))


@pytest.fixture(scope="module")
def cache_db(lab: None, tmp_path_factory: pytest.TempPathFactory):
    if not h.redis_up():
        pytest.skip(f"lab Redis {h.HOST}:{h.REDIS_PORT} not reachable (run scripts/lab up)")
    with h.scratch_database("tg_it_cache") as name:
        done = h.run_migrate(h.write_tidegate_config(tmp_path_factory.mktemp("cache")), name)
        assert done.returncode == 0, done.stderr
        rng = random.Random(7)
        with psycopg.connect(h.direct_dsn(db=name), autocommit=True) as c:
            c.execute("select tidegate_ensure_partitions('ticks', %s::date, %s)", (START.date(), DAYS + 3))
            with c.cursor().copy("COPY ticks (ts, symbol, price, size, exchange, trade_id) FROM STDIN") as copy:
                for symbol in SYMBOLS:
                    for i in range(1500):
                        ts = START + timedelta(seconds=i * 115 + rng.randrange(100))
                        copy.write_row((ts, symbol, round(rng.uniform(100, 200), 2), rng.randrange(1, 500), "X", i))
            # Another role sees every symbol but SECRET (row-level security): its results differ.
            c.execute("alter table ticks enable row level security")
            c.execute("create policy everyone on ticks for select using (symbol <> 'SECRET')")
            c.execute("grant select on ticks to tg_md5")
        yield name


@pytest.fixture(scope="module")
def cached(module_tidegate, cache_db):
    return module_tidegate(cache_overrides(cache_db, h.unique_name("tgc") + ":"), name="cache")


def day_range(day: int, start_minute: int = 0, minutes: int = 24 * 60) -> tuple[datetime, datetime]:
    lo = START + timedelta(days=day, minutes=start_minute)
    return lo, lo + timedelta(minutes=minutes)


def warm_up(proxy: h.Proxy, conn: psycopg.Connection) -> None:
    """Waits until the database's function catalog has loaded (the first statements calling functions
    are not cached while it loads)."""
    deadline = time.monotonic() + 10
    probe = "SELECT max(price) FROM ticks WHERE symbol = 'AAPL' AND ts >= '2026-11-02Z' AND ts < '2026-11-02 00:05Z'"
    while True:
        before = cache_stats(proxy)
        conn.execute(probe).fetchall()
        if int(cache_stats(proxy)["bypasses"]) == int(before["bypasses"]):
            return
        assert time.monotonic() < deadline, "the function catalog never loaded"
        time.sleep(0.05)


def fetch(conn: psycopg.Connection, sql: str, params=None, prepare: bool | None = None):
    cur = conn.execute(sql, params, prepare=prepare)
    description = [(d.name, d.type_code) for d in cur.description] if cur.description else None
    return description, cur.fetchall() if cur.description else None, cur.statusmessage


def test_repeat_reads_hit_and_replay_the_same_reply(cached: h.Proxy, cache_db: str):
    lo, hi = day_range(0)
    with psycopg.connect(h.direct_dsn(db=cache_db), autocommit=True) as direct, \
            psycopg.connect(cached.dsn(db=cache_db), autocommit=True, prepare_threshold=h.NEVER_AUTO_PREPARE) as c:
        expected = fetch(direct, OHLCV, ("AAPL", lo, hi))
        assert expected[1], "the sample data has ticks on day 0"
        # The first statement calling functions loads the database's function catalog; until then the
        # cache cannot tell its functions are safe and leaves it alone.
        warm_up(cached, c)
        for mode in (False, True):  # extended protocol, unprepared (Parse each time) and prepared
            before = cache_stats(cached)
            results = [fetch(c, OHLCV, ("AAPL", lo, hi), prepare=mode) for _ in range(5)]
            after = cache_stats(cached)
            for result in results:
                assert result == expected
            assert int(after["hits"]) - int(before["hits"]) >= 4, (before, after)
        # The simple protocol: the query text with literals.
        text = OHLCV.replace("%s", "'{}'").format("MSFT", lo.isoformat(), hi.isoformat())
        before = cache_stats(cached)
        simple = [fetch(c, pgsql.SQL(text)) for _ in range(4)]
        after = cache_stats(cached)
        assert all(r == fetch(direct, pgsql.SQL(text)) for r in simple)
        assert int(after["hits"]) - int(before["hits"]) == 3


def test_raw_bytes_of_a_hit_equal_the_servers(cached: h.Proxy, cache_db: str):
    """Byte for byte, through the wire: a hit replays exactly what the server sent for the miss."""
    query = OHLCV.replace("%s", "'{}'").format("NVDA", *(t.isoformat() for t in day_range(1, 600, 120)))
    replies = []
    for _ in range(3):
        with h.RawConn(h.HOST, cached.port) as raw:
            raw.startup("tidegate", cache_db, password="tidegate")
            raw.send(h.message(b"Q", query.encode() + b"\0"))
            replies.append(raw.read_until_ready().messages)
    assert replies[0] == replies[1] == replies[2]
    assert [m[0] for m in replies[0]][0] == "T" and replies[0][-1][0] == "Z"


def test_write_through_tidegate_is_seen_by_the_next_read(cached: h.Proxy, cache_db: str):
    lo, hi = day_range(1, 60, 60)
    read = ("SELECT count(*), sum(size) FROM ticks WHERE symbol = %s AND ts >= %s AND ts < %s")
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c:
        first = c.execute(read, ("MSFT", lo, hi)).fetchone()
        assert c.execute(read, ("MSFT", lo, hi)).fetchone() == first
        hits = int(cache_stats(cached)["hits"])
        c.execute("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES (%s, 'MSFT', 150, 7, 'X', 900001)",
                  (lo + timedelta(minutes=5),))
        after = c.execute(read, ("MSFT", lo, hi)).fetchone()
        assert after == (first[0] + 1, first[1] + 7)
        # In an explicit transaction: invalidated at COMMIT.
        with c.transaction():
            c.execute("UPDATE ticks SET size = size + 1000 WHERE symbol = 'MSFT' AND trade_id = 900001")
        assert c.execute(read, ("MSFT", lo, hi)).fetchone() == (first[0] + 1, first[1] + 1007)
        # Another session sees it too.
        with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as other:
            assert other.execute(read, ("MSFT", lo, hi)).fetchone() == (first[0] + 1, first[1] + 1007)
        c.execute("DELETE FROM ticks WHERE trade_id = 900001")
        assert c.execute(read, ("MSFT", lo, hi)).fetchone() == first
        assert int(cache_stats(cached)["invalidations"]) >= 3
        assert int(cache_stats(cached)["hits"]) >= hits


def test_a_result_for_one_role_is_never_served_to_another(cached: h.Proxy, cache_db: str):
    read = "SELECT symbol, count(*) FROM ticks WHERE ts >= %s AND ts < %s GROUP BY 1 ORDER BY 1"
    lo, hi = day_range(0)
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as owner, \
            psycopg.connect(cached.dsn(db=cache_db, user="tg_md5", password="tg_md5"), autocommit=True) as other:
        mine = [owner.execute(read, (lo, hi)).fetchall() for _ in range(3)]
        theirs = [other.execute(read, (lo, hi)).fetchall() for _ in range(3)]
    assert mine[0] == mine[1] == mine[2] and "SECRET" in [r[0] for r in mine[0]]
    assert theirs[0] == theirs[1] == theirs[2] and "SECRET" not in [r[0] for r in theirs[0]]


def test_timezone_and_datestyle_change_the_key(cached: h.Proxy, cache_db: str):
    read = "SELECT min(ts)::text, max(ts)::text FROM ticks WHERE symbol = 'AAPL' AND ts >= '2026-11-02 10:00+00' AND ts < '2026-11-02 11:00+00'"
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c, \
            psycopg.connect(h.direct_dsn(db=cache_db), autocommit=True) as direct:
        for zone, style in [("UTC", "ISO, MDY"), ("America/New_York", "ISO, MDY"), ("Asia/Kolkata", "SQL, DMY"), ("UTC", "ISO, MDY")]:
            for conn in (c, direct):
                conn.execute(f"SET TimeZone = '{zone}'")
                conn.execute(f"SET DateStyle = '{style}'")
            expected = direct.execute(read).fetchone()
            assert c.execute(read).fetchone() == expected
            assert c.execute(read).fetchone() == expected, f"second read under {zone} {style}"


def test_literals_without_a_zone_follow_the_session_timezone(cached: h.Proxy, cache_db: str):
    """A literal without an offset means another instant in another zone: the write that lands in the
    New York hour must invalidate the entry read under New York time."""
    read = "SELECT count(*) FROM ticks WHERE symbol = 'NVDA' AND ts >= '2026-11-03 09:00' AND ts < '2026-11-03 10:00'"
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c:
        c.execute("SET TimeZone = 'America/New_York'")
        before = c.execute(read).fetchone()[0]
        assert c.execute(read).fetchone()[0] == before
        # 09:30 New York = 14:30 UTC.
        c.execute("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ('2026-11-03 14:30+00', 'NVDA', 1, 1, 'X', 900002)")
        assert c.execute(read).fetchone()[0] == before + 1
        c.execute("DELETE FROM ticks WHERE trade_id = 900002")


def test_empty_results_are_cached(cached: h.Proxy, cache_db: str):
    read = "SELECT * FROM ticks WHERE symbol = 'NOPE' AND ts >= '2026-11-02Z' AND ts < '2026-11-03Z'"
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c:
        before = cache_stats(cached)
        assert [c.execute(read).fetchall() for _ in range(3)] == [[], [], []]
        after = cache_stats(cached)
        assert int(after["hits"]) - int(before["hits"]) == 2


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM ticks WHERE ts > now() - interval '400 days'",
    "SELECT count(*), random() < 2 FROM ticks WHERE symbol = 'AAPL'",
    "SELECT count(*) FROM ticks WHERE ts::date <= current_date",
    "/* tidegate: cache=off */ SELECT count(*) FROM ticks WHERE symbol = 'AAPL'",
    "SELECT count(*) FROM pg_class",
    "SELECT * FROM ticks WHERE symbol = 'AAPL' ORDER BY ts LIMIT 1 FOR UPDATE",
])
def test_what_must_not_be_cached_is_not(cached: h.Proxy, cache_db: str, sql: str):
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c:
        c.execute(sql).fetchall()  # the first one may load the function catalog
        before = cache_stats(cached)
        for _ in range(3):
            c.execute(sql).fetchall()
        after = cache_stats(cached)
    assert after["hits"] == before["hits"], sql
    assert after["misses"] == before["misses"], sql


def test_inside_a_transaction_reads_go_to_the_server(cached: h.Proxy, cache_db: str):
    read = "SELECT count(*) FROM ticks WHERE symbol = 'AAPL' AND ts >= '2026-11-02Z' AND ts < '2026-11-03Z'"
    with psycopg.connect(cached.dsn(db=cache_db)) as c:  # not autocommit
        c.execute(read).fetchone()
        before = cache_stats(cached)
        c.execute("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ('2026-11-02 12:00Z', 'AAPL', 1, 1, 'X', 900003)")
        inside = c.execute(read).fetchone()[0]
        c.rollback()
        after = cache_stats(cached)
        outside = psycopg.connect(cached.dsn(db=cache_db), autocommit=True).execute(read).fetchone()[0]
    assert inside == outside + 1
    assert after["hits"] == before["hits"]


def test_explain_cache_and_flush(cached: h.Proxy, cache_db: str):
    _, names, rows = h.admin_query(cached, "EXPLAIN CACHE SELECT max(price) FROM ticks WHERE symbol = 'AAPL' AND ts >= '2026-11-02Z' AND ts < '2026-11-03Z'")
    explained = {row[0]: row[1] for row in rows}
    assert explained["cacheable"] == "yes", rows
    assert "ticks: from" in explained["depends on"] and "'AAPL'" in explained["depends on"]
    _, _, rows = h.admin_query(cached, "EXPLAIN CACHE SELECT * FROM ticks FOR UPDATE")
    assert dict((r[0], r[1]) for r in rows)["cacheable"].startswith("no: a locking clause")
    read = "SELECT max(price) FROM ticks WHERE symbol = 'AAPL' AND ts >= '2026-11-02Z' AND ts < '2026-11-03Z'"
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c:
        c.execute(read).fetchone()
        c.execute(read).fetchone()
        for command in ("CACHE FLUSH ticks", "CACHE FLUSH"):
            tag, _, _ = h.admin_query(cached, command)
            assert tag == "CACHE FLUSH"
            before = cache_stats(cached)
            c.execute(read).fetchone()
            after = cache_stats(cached)
            assert int(after["misses"]) == int(before["misses"]) + 1, command
            assert after["hits"] == before["hits"], command
    with pytest.raises(psycopg.Error) as failure:
        h.admin_query(cached, "CACHE FLUSH accounts")
    assert failure.value.sqlstate == "42P01"
    _, names, rows = h.admin_query(cached, "SHOW CACHE QUERIES")
    assert names == ["by", "rank", "fingerprint", "hits", "misses"] and rows


def test_concurrent_misses_send_one_query(cached: h.Proxy, cache_db: str):
    """Single flight: 16 clients ask for the same uncached result at once; the server runs it once."""
    read = "SELECT count(*), max(price) FROM ticks WHERE symbol = 'MSFT' AND ts >= '2026-11-02 03:00Z' AND ts < '2026-11-03 03:00Z'"
    conns = [psycopg.connect(cached.dsn(db=cache_db), autocommit=True) for _ in range(16)]
    warm_up(cached, conns[0])
    with psycopg.connect(h.direct_dsn(db=cache_db), autocommit=True) as direct:
        def scans() -> int:
            return direct.execute("select coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) from pg_stat_user_tables where relname like 'ticks%%'").fetchone()[0]

        direct.execute("select pg_stat_clear_snapshot()")
        before = scans()
        barrier = threading.Barrier(len(conns))
        results = []

        def run(conn):
            barrier.wait()
            results.append(conn.execute(read).fetchone())

        threads = [threading.Thread(target=run, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.7)  # statistics reach pg_stat_user_tables within PGSTAT_MIN_INTERVAL
        direct.execute("select pg_stat_clear_snapshot()")
        after = scans()
    for conn in conns:
        conn.close()
    assert len(set(results)) == 1 and len(results) == 16
    partitions = 1  # the day lies in two daily partitions at most; one execution scans each once
    assert after - before <= 2 * partitions, f"{after - before} scans for 16 identical misses"
    assert int(cache_stats(cached)["single_flight_waits"]) > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((h.HOST, 0))
        return s.getsockname()[1]


def test_redis_stopped_mid_load_costs_no_query(module_tidegate, cache_db: str, tmp_path: Path):
    """A private Redis is killed while 8 clients read; every query still succeeds with the right answer,
    and when Redis is back the cache serves hits again."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (scripts/install-deps)")
    port = free_port()

    def start_redis() -> subprocess.Popen:
        process = subprocess.Popen([server, "--port", str(port), "--bind", h.HOST, "--save", "", "--appendonly", "no",
                                    "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert h.wait_for(lambda: h.port_accepts(h.HOST, port), 5), "private redis-server did not start"
        return process

    redis = start_redis()
    proxy = module_tidegate(cache_overrides(cache_db, "tgr:", **{"cache.redis.port": port}), name="cache-redis")
    queries = [(s, *day_range(d, m, 60)) for s in SYMBOLS[:3] for d in range(DAYS) for m in (0, 300, 900)]
    with psycopg.connect(h.direct_dsn(db=cache_db), autocommit=True) as direct:
        expected = {q: direct.execute(OHLCV, q).fetchall() for q in queries}
    failures: list[str] = []
    done = threading.Event()
    counts = [0] * 8

    def reader(index: int) -> None:
        rng = random.Random(index)
        try:
            with psycopg.connect(proxy.dsn(db=cache_db), autocommit=True) as c:
                while not done.is_set():
                    q = rng.choice(queries)
                    got = c.execute(OHLCV, q).fetchall()
                    if got != expected[q]:
                        failures.append(f"wrong rows for {q}")
                    counts[index] += 1
        except psycopg.Error as e:
            failures.append(f"reader {index}: {e.sqlstate} {e}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        hits_before = int(cache_stats(proxy)["hits"])
        redis.send_signal(signal.SIGKILL)
        redis.wait()
        during_start = sum(counts)
        time.sleep(2)
        during = sum(counts) - during_start
        assert cache_stats(proxy)["redis"] == "down"
        redis = start_redis()
        assert h.wait_for(lambda: cache_stats(proxy)["redis"].startswith("up"), 10), "the cache did not come back"
        time.sleep(2)
    finally:
        done.set()
        for t in threads:
            t.join()
        redis.kill()
    assert not failures, failures[:5]
    assert hits_before > 0
    assert during > 20, f"only {during} queries while Redis was down"
    stats = cache_stats(proxy)
    assert int(stats["bypasses"]) > 0
    assert int(stats["hits"]) > hits_before, "no hits after Redis came back"


def test_max_staleness_hint_accepts_a_recent_entry_after_a_write(cached: h.Proxy, cache_db: str):
    hinted = ("/* tidegate: max_staleness=30s */ SELECT count(*) FROM ticks WHERE symbol = 'AAPL' "
              "AND ts >= '2026-11-03 05:00Z' AND ts < '2026-11-03 06:00Z'")
    plain = hinted.split("*/", 1)[1]
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c:
        warm_up(cached, c)
        before = c.execute(hinted).fetchone()[0]
        c.execute(plain).fetchone()
        c.execute("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ('2026-11-03 05:30Z', 'AAPL', 1, 1, 'X', 900004)")
        try:
            # Opted in: the entry filled a moment ago is still served, without the new row.
            assert c.execute(hinted).fetchone()[0] == before
            # Not opted in: the write is there.
            assert c.execute(plain).fetchone()[0] == before + 1
        finally:
            c.execute("DELETE FROM ticks WHERE trade_id = 900004")


def test_metrics_show_the_cache(cached: h.Proxy, cache_db: str):
    with psycopg.connect(cached.dsn(db=cache_db), autocommit=True) as c:
        for _ in range(3):
            c.execute("SELECT count(*) FROM ticks WHERE symbol = 'MSFT' AND ts >= '2026-11-03Z' AND ts < '2026-11-03 01:00Z'").fetchone()
    time.sleep(1.2)  # published once a second
    status, _, body = h.http_get(cached.http[0], cached.http[1], "/metrics")
    text = body.decode()
    assert status == 200
    for name in ("tidegate_cache_hits_total", "tidegate_cache_misses_total", "tidegate_cache_l1_bytes",
                 "tidegate_cache_redis_up", "tidegate_cache_hit_duration"):
        assert name in text, name
    hits = [line for line in text.splitlines() if line.startswith("tidegate_cache_hits_total")]
    assert hits and float(hits[0].split()[-1]) >= 2
