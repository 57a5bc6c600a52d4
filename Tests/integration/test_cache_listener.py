"""Writes that bypass Tidegate (straight to the primary) reach the cache through the replication
listener: inserts, updates, deletes and TRUNCATE move what they touch, within the listener bound; a
listener that loses its connection invalidates everything once it is back, and serves no hits while
it is away."""

from __future__ import annotations

import time

import psycopg
import pytest

import tgharness as h
from test_cache import cache_stats

pytestmark = pytest.mark.requires_tidegate("the replication listener")

READ = "SELECT count(*), coalesce(sum(size), 0) FROM ticks WHERE symbol = 'LST' AND ts >= '2026-11-05Z' AND ts < '2026-11-05 01:00Z'"
BOUND_S = 1.0


@pytest.fixture(scope="module")
def listener_db(lab: None, tmp_path_factory: pytest.TempPathFactory):
    if not h.redis_up():
        pytest.skip(f"lab Redis {h.HOST}:{h.REDIS_PORT} not reachable (run scripts/lab up)")
    with h.scratch_database("tg_it_lst") as name:
        done = h.run_migrate(h.write_tidegate_config(tmp_path_factory.mktemp("lst")), name)
        assert done.returncode == 0, done.stderr
        with psycopg.connect(h.direct_dsn(db=name), autocommit=True) as c:
            c.execute("select tidegate_ensure_partitions('ticks', '2026-11-05'::date, 2)")
            c.execute("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ('2026-11-05 00:10Z', 'LST', 10, 5, 'X', 1)")
        yield name


@pytest.fixture(scope="module")
def listening(listener_db: str, module_tidegate):
    proxy = module_tidegate({
        "cache.enabled": True, "cache.redis.host": h.HOST, "cache.redis.port": h.REDIS_PORT,
        "cache.key_prefix": h.unique_name("tgl") + ":", "cache.listener.enabled": True,
        "cache.listener.databases": [listener_db], "cache.listener.max_lag_ms": int(BOUND_S * 1000),
        "relations.ticks.rewrite": False, "storage.maintenance_interval_ms": 0,
    }, name="cache-listener")
    assert h.wait_for(lambda: "down" not in str(cache_stats(proxy)["listener_lag"]), 15), cache_stats(proxy)
    return proxy


def settle(proxy: h.Proxy, conn: psycopg.Connection) -> tuple:
    """Reads until the answer is a hit (an entry exists), and returns it."""
    deadline = time.monotonic() + 10
    while True:
        before = int(cache_stats(proxy)["hits"])
        row = conn.execute(READ).fetchone()
        if int(cache_stats(proxy)["hits"]) > before:
            return row
        assert time.monotonic() < deadline, cache_stats(proxy)


@pytest.mark.parametrize("write, expected", [
    ("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ('2026-11-05 00:20Z', 'LST', 10, 7, 'X', 2)", (2, 12)),
    ("UPDATE ticks SET size = 100 WHERE trade_id = 2", (2, 105)),
    ("UPDATE ticks SET ts = '2026-11-05 03:00Z' WHERE trade_id = 2", (1, 5)),
    ("DELETE FROM ticks WHERE trade_id = 1", (0, 0)),
    ("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ('2026-11-05 00:30Z', 'LST', 10, 3, 'X', 3)", (1, 3)),
    ("TRUNCATE ticks", (0, 0)),
])
def test_a_bypassing_write_is_seen_within_the_bound(listening: h.Proxy, listener_db: str, write: str, expected: tuple):
    with psycopg.connect(listening.dsn(db=listener_db), autocommit=True) as c, \
            psycopg.connect(h.direct_dsn(db=listener_db), autocommit=True) as direct:
        settle(listening, c)
        direct.execute(write)
        acked = time.monotonic()
        time.sleep(BOUND_S + 0.25)
        assert c.execute(READ).fetchone() == expected, write
        assert time.monotonic() - acked < 5


def test_a_lost_listener_connection_serves_no_stale_hit(listening: h.Proxy, listener_db: str):
    with psycopg.connect(listening.dsn(db=listener_db), autocommit=True) as c, \
            psycopg.connect(h.direct_dsn(db=listener_db), autocommit=True) as direct, h.superuser() as su:
        before = settle(listening, c)
        replaced = int(cache_stats(listening)["generation_replacements"])
        killed = su.execute("select count(pg_terminate_backend(active_pid)) from pg_replication_slots "
                            "where database = %s and slot_type = 'logical' and active", (listener_db,)).fetchone()[0]
        assert killed == 1
        direct.execute("INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id) VALUES ('2026-11-05 00:40Z', 'LST', 10, 1000, 'X', 9)")
        # Whatever the listener's state, no read may miss that insert once the bound has passed.
        time.sleep(BOUND_S + 0.25)
        assert c.execute(READ).fetchone() == (before[0] + 1, before[1] + 1000)
        assert h.wait_for(lambda: int(cache_stats(listening)["generation_replacements"]) > replaced, 15), cache_stats(listening)
        settle(listening, c)
