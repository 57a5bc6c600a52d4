"""loadtest/gen-market-data, the synthetic market-data generator: its COPY text (--stdout, no
database) is deterministic and realistic in the ways the differential tests rely on, and it loads
into a freshly migrated scratch database (created by the superuser, migrated with the real
`tidegate migrate`, dropped afterwards) without breaking a constraint."""

from __future__ import annotations

import datetime as dt
import hashlib
import statistics
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest

import tgharness as h

GENERATOR = h.REPO / "loadtest" / "gen-market-data"
NEW_YORK = ZoneInfo("America/New_York")
# Small but not trivial: 3 trading days from a Thursday before the end of US daylight saving time
# (2026-11-01), so the days are Thu 10-29 and Fri 10-30 (EDT) and Mon 11-02 (EST).
SMALL = ["--ticks", "12000", "--symbols", "12", "--start", "2026-10-29", "--days", "3"]


def generate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True,
                          timeout=timeout)


def stdout_rows(*args: str) -> str:
    r = generate("--stdout", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def parse(text: str) -> list[tuple[dt.datetime, str, str, int, int, str, str]]:
    """COPY text rows: ts, symbol, price, trade_id, size, exchange, conditions."""
    rows = []
    for line in text.splitlines():
        ts, symbol, price, trade_id, size, exchange, conditions = line.split("\t")
        assert ts.endswith("+00"), line
        when = dt.datetime.fromisoformat(ts[:-3]).replace(tzinfo=dt.timezone.utc)
        rows.append((when, symbol, price, int(trade_id), int(size), exchange, conditions))
    return rows


@pytest.fixture(scope="module")
def small_text() -> str:
    return stdout_rows("--seed", "5", *SMALL)


def test_same_seed_same_bytes_other_seed_other_rows(small_text):
    again = stdout_rows("--seed", "5", *SMALL)
    assert hashlib.sha256(again.encode()).hexdigest() == hashlib.sha256(small_text.encode()).hexdigest()
    other = stdout_rows("--seed", "6", *SMALL)
    assert other != small_text
    assert len(other.splitlines()) == len(small_text.splitlines()) == 12000


def test_ticks_fall_in_the_regular_session_on_weekdays(small_text):
    rows = parse(small_text)
    days = set()
    for when, *_ in rows:
        local = when.astimezone(NEW_YORK)
        assert local.weekday() < 5, when
        assert dt.time(9, 30) <= local.time() < dt.time(16, 0), (when, local)
        days.add(local.date())
    assert days == {dt.date(2026, 10, 29), dt.date(2026, 10, 30), dt.date(2026, 11, 2)}
    # The same local session is 13:30-20:00 UTC in daylight saving time, 14:30-21:00 after it.
    assert min(w for w, *_ in rows if w.date() == dt.date(2026, 10, 29)).hour == 13
    assert min(w for w, *_ in rows if w.date() == dt.date(2026, 11, 2)).hour == 14


def test_per_symbol_timestamps_strictly_increase_and_trade_ids_are_unique(small_text):
    last: dict[str, dt.datetime] = {}
    ids: dict[str, set[int]] = defaultdict(set)
    for when, symbol, price, trade_id, size, exchange, conditions in parse(small_text):
        if symbol in last:
            assert when > last[symbol], (symbol, last[symbol], when)
        last[symbol] = when
        assert trade_id not in ids[symbol], (symbol, trade_id)
        ids[symbol].add(trade_id)
        assert float(price) > 0 and size >= 0, (symbol, price, size)
        assert conditions.startswith("{") and conditions.endswith("}"), conditions
    assert len(last) == 12


def test_symbol_activity_is_zipf_skewed():
    def counts(*args: str) -> list[int]:
        per: dict[str, int] = defaultdict(int)
        for line in stdout_rows("--ticks", "10000", "--symbols", "20", "--days", "1", *args).splitlines():
            per[line.split("\t", 2)[1]] += 1
        assert sum(per.values()) == 10000
        return sorted(per.values())
    skewed = counts()                                  # --zipf 1.1
    assert skewed[-1] > 8 * statistics.median(skewed), skewed
    flat = counts("--zipf", "0")
    assert flat[-1] < 1.5 * flat[0], flat


def test_unreachable_database_is_one_line_and_exit_2():
    r = generate("--dsn", "host=127.0.0.1 port=1 user=tidegate dbname=market connect_timeout=3",
                 "--ticks", "10")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("gen-market-data: error: cannot connect"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# Loaded into scratch databases


@pytest.fixture(scope="module")
def scratch(lab: None, tmp_path_factory: pytest.TempPathFactory):
    """Two scratch databases: (migrated, empty)."""
    config = h.write_tidegate_config(tmp_path_factory.mktemp("gen"))
    with h.scratch_database("tg_it_gen") as migrated, h.scratch_database("tg_it_gen_empty") as empty:
        r = h.run_migrate(config, migrated)
        assert r.returncode == 0, r.stderr
        yield migrated, empty


def dsn(db: str) -> str:
    return f"host={h.HOST} port={h.PRIMARY_PORT} user=tidegate password=tidegate dbname={db}"


LOAD = ["--seed", "11", "--ticks", "20000", "--quotes-per-tick", "0.5", "--symbols", "15",
        "--start", "2026-11-19", "--days", "2"]


@pytest.fixture(scope="module")
def loaded(scratch) -> str:
    db = scratch[0]
    r = generate("--dsn", dsn(db), *LOAD, "--truncate", "--refresh", timeout=180)
    assert r.returncode == 0, r.stderr
    assert "loaded 20,000 ticks, 10,000 quotes, 15 instruments" in r.stdout, r.stdout
    assert "rows/s" in r.stdout, r.stdout
    return db


@pytest.mark.requires_tidegate("tidegate migrate")
def test_loads_into_daily_partitions_within_the_constraints(loaded):
    with psycopg.connect(h.direct_dsn(db=loaded), autocommit=True) as c:
        one = lambda sql: c.execute(sql).fetchone()
        assert one("select count(*), count(distinct (symbol, ts)), count(distinct (symbol, trade_id)) "
                   "from ticks") == (20000, 20000, 20000)
        assert one("select count(*) from quotes") == (10000,)
        assert one("select count(*) from instruments") == (15,)
        # rows in their day's partition, none in the default ones
        assert one("select count(*) from ticks_default") == (0,)
        assert one("select count(*) from quotes_default") == (0,)
        parts = dict(c.execute("select tableoid::regclass::text, count(*) from ticks group by 1").fetchall())
        assert set(parts) == {"ticks_p20261119", "ticks_p20261120"}, parts
        # prices on the instrument's tick grid, quotes not crossed, every symbol an instrument
        assert one("select count(*) from ticks t join instruments i using (symbol) "
                   "where t.price % i.tick_size <> 0 or t.price <= 0") == (0,)
        assert one("select count(*) from quotes where bid > ask or bid <= 0") == (0,)
        assert one("select count(*) from quotes where bid = ask") == (0,)
        assert one("select count(*) from ticks t where not exists "
                   "(select 1 from instruments i where i.symbol = t.symbol)") == (0,)
        assert one("select count(*) from ticks where (ts at time zone 'America/New_York')::time "
                   "not between '09:30' and '15:59:59.999999'") == (0,)
        # --refresh: the bars cover every tick
        assert one("select sum(trade_count) from bars_1d") == (20000,)
        assert one("select count(*) from tidegate_bars_dirty") == (0,)


@pytest.mark.requires_tidegate("tidegate migrate")
def test_loaded_ticks_are_the_stdout_rows(loaded):
    expected = stdout_rows(*LOAD)
    with psycopg.connect(h.direct_dsn(db=loaded), autocommit=True) as c:
        c.execute("set timezone = 'UTC'")
        got = c.execute("select count(*), min(ts), max(ts), sum(size), sum(price) from ticks").fetchone()
    rows = parse(expected)
    assert got[0] == len(rows)
    assert got[1] == min(r[0] for r in rows) and got[2] == max(r[0] for r in rows)
    assert got[3] == sum(r[4] for r in rows)
    assert got[4] == sum(Decimal(r[2]) for r in rows)


@pytest.mark.requires_tidegate("tidegate migrate")
def test_second_load_without_truncate_is_refused_in_one_line(loaded):
    r = generate("--dsn", dsn(loaded), *LOAD)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "duplicate rows" in r.stderr and "--truncate" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    with psycopg.connect(h.direct_dsn(db=loaded), autocommit=True) as c:
        assert c.execute("select (select count(*) from ticks), (select count(*) from quotes)").fetchone() \
            == (20000, 10000), "the failed load left rows behind"


@pytest.mark.requires_tidegate("tidegate migrate")
def test_unmigrated_database_says_run_migrate(scratch):
    r = generate("--dsn", dsn(scratch[1]), "--ticks", "10")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "run `tidegate migrate" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
