"""`tidegate migrate` on the lab's plain PostgreSQL: every test gets a scratch database (created by
the superuser, owned by `tidegate`, dropped afterwards) and runs the real binary against the lab
primary with a generated config (the suite's single-node config), as an operator would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

import tgharness as h

pytestmark = pytest.mark.requires_tidegate("tidegate migrate")

MIGRATIONS = h.REPO / "migrations"
LOCK_KEY = 7233884151


superuser = h.superuser


@pytest.fixture
def scratch_db(lab: None):
    with h.scratch_database("tg_it_mig") as name:
        yield name


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return h.write_tidegate_config(tmp_path)


def migrate(config: Path, db: str, *args: str, directory: Path = MIGRATIONS) -> subprocess.CompletedProcess:
    return h.run_migrate(config, db, *args, directory=directory)


def db_conn(db: str) -> psycopg.Connection:
    return psycopg.connect(h.direct_dsn(db=db), autocommit=True)


def applied(db: str) -> list[tuple]:
    with db_conn(db) as c:
        return c.execute("select version, name, flavour from tidegate_schema_migrations order by version").fetchall()


def test_migrate_twice_is_a_no_op_the_second_time(config_file, scratch_db):
    dry = migrate(config_file, scratch_db, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "postgres flavour" in dry.stdout and "would apply" in dry.stdout, dry.stdout
    with db_conn(scratch_db) as c:
        assert c.execute("select to_regclass('tidegate_schema_migrations')").fetchone() == (None,), \
            "--dry-run changed the database"

    first = migrate(config_file, scratch_db)
    assert first.returncode == 0, first.stderr
    files = sorted(p.name for p in MIGRATIONS.glob("*.sql") if ".timescaledb." not in p.name)
    assert f"0 already applied, applied {len(files)}" in first.stdout, first.stdout
    rows = applied(scratch_db)
    assert [r[0] for r in rows] == sorted({int(f.split("_")[0]) for f in files})
    assert {r[2] for r in rows} == {"postgres"}

    second = migrate(config_file, scratch_db)
    assert second.returncode == 0, second.stderr
    assert f"{len(rows)} already applied, applied 0" in second.stdout, second.stdout
    assert applied(scratch_db) == rows


def test_schema_rejects_bad_data_and_duplicates(config_file, scratch_db):
    assert migrate(config_file, scratch_db).returncode == 0
    with db_conn(scratch_db) as c:
        c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
                  "values (now(), 'AAPL', 190.5, 100, 'XNAS', 1)")
        # A row for a day without its own partition lands in the default partition.
        c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
                  "values ('2001-02-03 10:00+00', 'AAPL', 1.5, 1, 'XNAS', 2)")
        for bad, sqlstate in (
            ("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
             "values (now(), 'AAPL', 0, 100, 'XNAS', 3)", "23514"),          # price > 0
            ("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
             "values (now(), 'AAPL', 1, -1, 'XNAS', 4)", "23514"),           # size >= 0
            ("insert into quotes (ts, symbol, bid, ask, bid_size, ask_size) "
             "values (now(), 'AAPL', 2, 1, 1, 1)", "23514"),                 # bid <= ask
        ):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(bad)
            assert ei.value.sqlstate == sqlstate, (bad, ei.value)
        row = c.execute("select ts, symbol, trade_id from ticks where trade_id = 1").fetchone()
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) "
                      "values (%s, %s, 191, 1, 'XNAS', %s)", row)
        where = dict(c.execute("select trade_id, tableoid::regclass::text from ticks").fetchall())
        assert where[1].startswith("ticks_p") and where[2] == "ticks_default", where


def test_edited_migration_is_refused(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    assert migrate(config_file, scratch_db, directory=directory).returncode == 0
    edited = next(p for p in sorted(directory.glob("*.postgres.sql")))
    edited.write_text(edited.read_text() + "\n-- edited after it was applied\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{edited.name} changed after it was applied" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Fatal error" not in r.stderr, r.stderr


def test_failing_migration_is_rolled_back_and_reported(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9001_half_done.sql").write_text(
        "create table tg_half_done (x int);\ninsert into tg_half_done values (1);\nselect 1 / 0;\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "9001_half_done.sql failed and was rolled back" in r.stderr and "22012" in r.stderr, r.stderr
    with db_conn(scratch_db) as c:
        assert c.execute("select to_regclass('tg_half_done')").fetchone() == (None,)
    assert 9001 not in [v for v, _, _ in applied(scratch_db)]
    # The migrations before it are applied and recorded; fixing the file lets the run finish.
    (directory / "9001_half_done.sql").write_text("create table tg_half_done (x int);\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 0 and "applied 1" in r.stdout, (r.stdout, r.stderr)


def test_transaction_control_in_a_file_is_refused(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9002_commits.sql").write_text("create table a (x int);\ncommit;\ncreate table b (x int);\n")
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 1 and "9002_commits.sql: transaction control" in r.stderr, (r.stdout, r.stderr)
    with db_conn(scratch_db) as c:
        assert c.execute("select to_regclass('tidegate_schema_migrations')").fetchone() == (None,), \
            "nothing may be applied when a file is refused"


def test_two_runs_at_once_are_refused(config_file, scratch_db):
    with db_conn(scratch_db) as holder:
        holder.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        r = migrate(config_file, scratch_db)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "another tidegate migrate is running" in r.stderr, r.stderr
    assert migrate(config_file, scratch_db).returncode == 0


def test_target_applies_up_to_a_version(config_file, scratch_db, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    (directory / "9003_later.sql").write_text("create table tg_later (x int);\n")
    first_version = min(int(p.name.split("_")[0]) for p in MIGRATIONS.glob("*.sql"))
    r = migrate(config_file, scratch_db, "--target", str(first_version), directory=directory)
    assert r.returncode == 0, r.stderr
    assert [v for v, _, _ in applied(scratch_db)] == [first_version]
    r = migrate(config_file, scratch_db, directory=directory)
    assert r.returncode == 0, r.stderr
    assert [v for v, _, _ in applied(scratch_db)][-1] == 9003
    r = migrate(config_file, scratch_db, "--target", str(first_version), directory=directory)
    assert r.returncode == 1 and "only go forward" in r.stderr, (r.stdout, r.stderr)


# --------------------------------------------------------------------------------------------
# The TimescaleDB compatibility functions of the plain-PostgreSQL flavour (migration 2)

# (width, ts, origin or None, what TimescaleDB 2.x returns): default origin Monday 2000-01-03 UTC,
# 2000-01-01 for month widths; timestamptz buckets in UTC.
TIME_BUCKET_CASES = [
    ("5 minutes", "2020-01-01 10:07:30+00", None, "2020-01-01 10:05:00+00"),
    ("1 minute", "2020-01-01 10:07:30.5+00", None, "2020-01-01 10:07:00+00"),
    ("15 minutes", "2020-01-01 23:59:59+00", None, "2020-01-01 23:45:00+00"),
    ("1 hour", "2020-01-01 10:10+00", "2020-01-01 00:30+00", "2020-01-01 09:30:00+00"),
    ("1 day", "2020-01-01 10:00+05", None, "2020-01-01 00:00:00+00"),
    ("1 day", "1999-12-31 10:00+00", None, "1999-12-31 00:00:00+00"),
    ("1 week", "2020-01-01 10:00+00", None, "2019-12-30 00:00:00+00"),
    ("1 week", "1999-12-29 10:00+00", None, "1999-12-27 00:00:00+00"),
    ("1 month", "2020-02-15 10:00+00", None, "2020-02-01 00:00:00+00"),
    ("3 months", "2020-05-15 00:00+00", None, "2020-04-01 00:00:00+00"),
    ("1 month", "1999-12-31 10:00+00", None, "1999-12-01 00:00:00+00"),
    ("1 year", "2021-07-04 12:00+00", None, "2021-01-01 00:00:00+00"),
]


@pytest.fixture
def migrated_db(config_file, scratch_db):
    r = migrate(config_file, scratch_db)
    assert r.returncode == 0, r.stderr
    with db_conn(scratch_db) as c:
        c.execute("set timezone = 'UTC'")
        yield c


def test_time_bucket_matches_timescaledb(migrated_db):
    c = migrated_db
    for width, ts, origin, want in TIME_BUCKET_CASES:
        if origin is None:
            got = c.execute("select time_bucket(%s::interval, %s::timestamptz)::text", (width, ts)).fetchone()[0]
        else:
            got = c.execute("select time_bucket(%s::interval, %s::timestamptz, %s::timestamptz)::text",
                            (width, ts, origin)).fetchone()[0]
        assert got == want, f"time_bucket({width}, {ts}{', ' + origin if origin else ''}) = {got}, want {want}"
    # timestamp without time zone buckets the same way.
    assert c.execute("select time_bucket('1 week', '1999-12-29 10:00'::timestamp)::text").fetchone() == \
        ("1999-12-27 00:00:00",)
    with pytest.raises(psycopg.Error) as ei:
        c.execute("select time_bucket('1 month 1 day', now())")
    assert ei.value.sqlstate == "22023" and "month intervals" in str(ei.value)
    # Immutable, so the router keeps reads that bucket on replicas, and expression indexes work.
    assert c.execute("select bool_and(provolatile = 'i') from pg_proc where proname = 'time_bucket'").fetchone() == (True,)


def test_time_bucket_properties_on_random_values(migrated_db):
    """For 20,000 random (width, ts) pairs: the bucket starts at or before ts, ends after it, and lies
    a whole number of widths from the default origin."""
    bad = migrated_db.execute("""
        with samples as (
            select (array['1 minute', '5 minutes', '15 minutes', '1 hour', '4 hours', '1 day', '7 days'])
                       [1 + (i % 7)]::interval as width,
                   timestamptz '1995-01-01 00:00+00' + random() * interval '40 years' as ts
            from generate_series(1, 20000) i)
        select width, ts, time_bucket(width, ts) from samples
        where not (time_bucket(width, ts) <= ts and ts < time_bucket(width, ts) + width
                   and mod(extract(epoch from time_bucket(width, ts) - timestamptz '2000-01-03 00:00+00')::numeric,
                           extract(epoch from width)::numeric) = 0)
        limit 5""").fetchall()
    assert not bad, f"time_bucket breaks its own contract: {bad}"


def test_first_and_last_match_ordered_aggregates(migrated_db):
    c = migrated_db
    c.execute("""
        create temp table samples as
        select (array['AAPL', 'MSFT', 'TSLA'])[1 + (i % 3)] as symbol,
               timestamptz '2024-01-02 14:30+00' + (random() * 23400) * interval '1 second' as ts,
               round((100 + random() * 50)::numeric, 2) as price, (1 + random() * 1000)::bigint as size
        from generate_series(1, 30000) i""")
    rows = c.execute("""
        select symbol,
               first(price, ts) = (array_agg(price order by ts))[1],
               last(price, ts) = (array_agg(price order by ts desc))[1],
               first(size, ts) = (array_agg(size order by ts))[1],
               last(price::float8, ts) = (array_agg(price::float8 order by ts desc))[1]
        from samples group by symbol order by symbol""").fetchall()
    assert rows and all(all(r[1:]) for r in rows), rows
    # NULL times are ignored; no rows give NULL.
    assert c.execute("""select first(v, t), last(v, t) from (values (1::bigint, '2020-01-02'::timestamptz),
                        (2, null), (3, '2020-01-03')) x(v, t)""").fetchone() == (1, 3)
    assert c.execute("select first(1::numeric, now()) where false").fetchone() == (None,)


# --------------------------------------------------------------------------------------------
# Bars (migration 3): incremental rollups on plain PostgreSQL

LEVELS = [("bars_1m", "1 minute"), ("bars_5m", "5 minutes"), ("bars_15m", "15 minutes"),
          ("bars_1h", "1 hour"), ("bars_1d", "1 day")]


def bars_mismatches(c: psycopg.Connection, level: str, width: str) -> list[tuple]:
    """Rows where a bar level differs from the same bars computed from ticks directly."""
    return c.execute(f"""
        with truth as (
            select symbol, time_bucket('{width}', ts) as bucket, first(price, ts) as open, max(price) as high,
                   min(price) as low, last(price, ts) as close, sum(size) as volume, count(*) as trade_count,
                   sum(price * size) / nullif(sum(size), 0) as vwap
            from ticks group by 1, 2)
        select coalesce(t.symbol, b.symbol), coalesce(t.bucket, b.bucket), t.close, b.close
        from truth t full join {level} b on b.symbol = t.symbol and b.bucket = t.bucket
        where t.symbol is null or b.symbol is null
           or (t.open, t.high, t.low, t.close, t.volume, t.trade_count) is distinct from
              (b.open, b.high, b.low, b.close, b.volume, b.trade_count)
           or abs(coalesce(t.vwap, 0) - coalesce(b.vwap, 0)) > 1e-9
        limit 5""").fetchall()


def insert_random_ticks(c: psycopg.Connection, n: int, first_trade: int, start: str, seconds: int) -> None:
    c.execute("""
        insert into ticks (ts, symbol, price, size, exchange, trade_id)
        select %s::timestamptz + random() * %s * interval '1 second',
               (array['AAPL', 'MSFT', 'TSLA'])[1 + (i %% 3)],
               round((100 + random() * 50)::numeric, 2), (1 + random() * 500)::bigint, 'XNAS', %s + i
        from generate_series(1, %s) i""", (start, seconds, first_trade, n))


def test_bars_refresh_incrementally_and_match_ticks(migrated_db):
    c = migrated_db
    # Two trading days, crossing midnight UTC, so every level has several buckets.
    insert_random_ticks(c, 20000, 0, "2024-03-04 20:00+00", 6 * 3600)
    refreshed = c.execute("select tidegate_refresh_bars()").fetchone()[0]
    minutes = c.execute("select count(distinct (symbol, time_bucket('1 minute', ts))) from ticks").fetchone()[0]
    assert refreshed == minutes, (refreshed, minutes)
    for level, width in LEVELS:
        assert not bars_mismatches(c, level, width), (level, bars_mismatches(c, level, width))
    assert c.execute("select tidegate_refresh_bars()").fetchone()[0] == 0, "nothing changed, nothing to refresh"

    # Late and changed data: a few new ticks in old buckets, an update, a delete. Only the touched
    # minutes are recomputed, and every level matches ticks again.
    insert_random_ticks(c, 50, 1_000_000, "2024-03-04 21:00+00", 120)
    c.execute("update ticks set price = price + 1 where trade_id in (10, 11)")
    c.execute("delete from ticks where trade_id between 100 and 102")
    dirty = c.execute("select count(*) from tidegate_bars_dirty").fetchone()[0]
    assert 0 < dirty <= 50 + 2 + 3, dirty
    assert c.execute("select tidegate_refresh_bars()").fetchone()[0] == dirty
    for level, width in LEVELS:
        assert not bars_mismatches(c, level, width), (level, bars_mismatches(c, level, width))
    # The procedure both flavours offer.
    c.execute("call tidegate_refresh_bars_now()")
