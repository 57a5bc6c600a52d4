"""The multi-timeframe rewrite on the lab: time_bucket aggregates over ticks sent through Tidegate are
rewritten to read the bars rollups where they are materialized, and every reply is identical to the
raw query sent directly to the primary — column names, types and rows — on randomized widths,
ranges, bound forms, symbols, aggregates, time zones and protocol modes, with rollups fresh, stale
(late ticks, updates and deletes not yet refreshed) and refreshed again.

Each module run gets a scratch database migrated by the real `tidegate migrate` and a Tidegate of
its own with `relations.ticks.rewrite: true`."""

from __future__ import annotations

import random
import threading
import re
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

import tgharness as h

pytestmark = pytest.mark.requires_tidegate("the rollup rewrite")

SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
START = datetime(2026, 10, 30, tzinfo=timezone.utc)  # the days span the end of DST in America/New_York (Nov 1)
DAYS = 4
WIDTHS = ["1 minute", "2 minutes", "5 minutes", "10 minutes", "15 minutes", "30 minutes", "1 hour",
          "2 hours", "4 hours", "1 day", "1 week"]
EXPECTED_ROLLUP = {"1 minute": "bars_1m", "2 minutes": "bars_1m", "5 minutes": "bars_5m",
                   "10 minutes": "bars_5m", "15 minutes": "bars_15m", "30 minutes": "bars_15m",
                   "1 hour": "bars_1h", "2 hours": "bars_1h", "4 hours": "bars_1h",
                   "1 day": "bars_1d", "1 week": "bars_1d"}
AGGREGATES = ["first(price, ts)", "last(price, ts)", "max(price)", "min(price)", "sum(size)",
              "count(*)", "avg(size)", "count(price)"]


def make_ticks(rng: random.Random, count: int, start: datetime, seconds: int, trade_base: int) -> list[tuple]:
    """Ticks with a strictly unique ts per symbol (first/last are then deterministic)."""
    rows = []
    base = int(start.timestamp() * 1_000_000)
    for symbol in SYMBOLS:
        offsets = sorted(rng.sample(range(seconds * 1000), count // len(SYMBOLS)))
        price = rng.uniform(20, 500)
        for i, offset in enumerate(offsets):
            price = max(0.01, price * (1 + rng.gauss(0, 0.001)))
            ts = datetime.fromtimestamp((base + offset * 1000 + rng.randrange(1000)) / 1e6, tz=timezone.utc)
            rows.append((ts, symbol, round(price, 2), rng.randrange(1, 1000), "X", trade_base + i))
    return rows


def copy_ticks(conn: psycopg.Connection, rows: list[tuple]) -> None:
    with conn.cursor() as cur:
        with cur.copy("COPY ticks (ts, symbol, price, size, exchange, trade_id) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


@pytest.fixture(scope="module")
def rewrite_db(lab: None, tmp_path_factory: pytest.TempPathFactory):
    with h.scratch_database("tg_it_rw") as name:
        done = h.run_migrate(h.write_tidegate_config(tmp_path_factory.mktemp("rw")), name)
        assert done.returncode == 0, done.stderr
        rng = random.Random(20261202)
        with psycopg.connect(h.direct_dsn(db=name), autocommit=True) as c:
            c.execute("select tidegate_ensure_partitions('ticks', %s::date, %s)", (START.date(), DAYS + 1))
            copy_ticks(c, make_ticks(rng, 60_000, START, DAYS * 86400, 0))
            c.execute("select tidegate_refresh_bars()")
        yield name


@pytest.fixture(scope="module")
def rewriting_proxy(module_tidegate, rewrite_db):
    return module_tidegate({"relations.ticks.rewrite": True}, name="rewrite")


def rewrites(proxy: h.Proxy) -> int:
    with psycopg.connect(proxy.dsn(db="tidegate"), autocommit=True) as c:
        cur = c.execute("SHOW STATS")
        names = [d.name for d in cur.description]
        return int(cur.fetchone()[names.index("rollup_rewrites")])


def explain(proxy: h.Proxy, sql: str, admin: psycopg.Connection | None = None) -> tuple:
    if admin is not None:
        return admin.execute("EXPLAIN REWRITE " + sql).fetchone()
    with psycopg.connect(proxy.dsn(db="tidegate"), autocommit=True) as c:
        return c.execute("EXPLAIN REWRITE " + sql).fetchone()


def wait_for_rewrites(proxy: h.Proxy, db: str) -> None:
    """The first statements of a database go unchanged while its function catalog loads."""
    sql = "SELECT time_bucket('1 hour', ts), max(price) FROM ticks GROUP BY 1"
    before = rewrites(proxy)
    deadline = time.monotonic() + 10
    with psycopg.connect(proxy.dsn(db=db), autocommit=True) as c:
        while rewrites(proxy) == before:
            assert time.monotonic() < deadline, "Tidegate never rewrote a time_bucket aggregate:\n" + proxy.log_tail()
            c.execute(sql).fetchall()
            time.sleep(0.05)


def literal(ts: datetime, rng: random.Random, zone: str) -> str:
    """A time literal: with an explicit offset, or none (then read in the session's TimeZone)."""
    if rng.random() < 0.5 or zone == "UTC":
        return f"'{ts.isoformat()}'"
    return f"'{ts.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def random_query(rng: random.Random, zone: str) -> tuple[str, list]:
    width = rng.choice(WIDTHS)
    aggregates = rng.sample(AGGREGATES, rng.randrange(1, len(AGGREGATES) + 1))
    by_symbol = rng.random() < 0.4
    # Ranges: aligned or not, from minutes to the whole data set, sometimes past its ends.
    lo = START + timedelta(seconds=rng.randrange(-3600, DAYS * 86400))
    if rng.random() < 0.3:
        lo = lo.replace(second=0, microsecond=0, minute=(lo.minute // 15) * 15)
    else:
        lo = lo.replace(microsecond=rng.choice([0, rng.randrange(1_000_000)]))
    hi = lo + timedelta(seconds=rng.choice([59, 600, 3600, 4 * 3600, 86400, 3 * 86400, 10 * 86400]) + rng.randrange(-30, 30))
    params: list = []
    conditions = []
    form = rng.choice(["closed-open", "open-closed", "between", "lower", "upper", "equal", "both-lower", "none"])
    lo_sql, hi_sql = literal(lo, rng, zone), literal(hi, rng, zone)
    if rng.random() < 0.3:
        # Bound parameters (extended protocol).
        params = [lo, hi]
        lo_sql, hi_sql = "%s", "%s"
    if form == "closed-open":
        conditions += [f"ts >= {lo_sql}", f"ts < {hi_sql}"]
    elif form == "open-closed":
        conditions += [f"ts > {lo_sql}", f"{hi_sql} >= ts"]
    elif form == "between":
        conditions += [f"ts BETWEEN {lo_sql} AND {hi_sql}"]
    elif form == "lower":
        conditions += [f"ts >= {lo_sql}"]
        params = params[:1]
    elif form == "upper":
        conditions += [f"ts < {lo_sql}"]
        params = params[:1]
    elif form == "equal":
        conditions += [f"ts = {lo_sql}"]
        params = params[:1]
    elif form == "both-lower":
        conditions += [f"ts >= {lo_sql}", f"ts > CAST({hi_sql} AS timestamptz) - interval '2 days'", f"ts < {hi_sql}"]
        params = params + [hi] if params else params
    else:
        params = []
    symbols = rng.sample(SYMBOLS, rng.randrange(1, 4))
    choice = rng.random()
    if choice < 0.5:
        conditions.insert(rng.randrange(len(conditions) + 1), f"symbol = '{symbols[0]}'")
    elif choice < 0.8:
        conditions.append("symbol IN (" + ", ".join(f"'{s}'" for s in symbols) + ")")
    select = [f"time_bucket('{width}', ts) AS bucket"] + [
        f"{a} AS a{i}" if rng.random() < 0.5 else a for i, a in enumerate(aggregates)]
    group = "GROUP BY 1"
    order = "ORDER BY 1"
    if by_symbol:
        select.insert(rng.randrange(len(select) + 1), "symbol")
        group = "GROUP BY bucket, symbol"
        order = "ORDER BY bucket, symbol" if rng.random() < 0.5 else "ORDER BY symbol DESC, bucket"
    sql = f"SELECT {', '.join(select)} FROM ticks"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" {group} {order}"
    if rng.random() < 0.1:
        sql += f" LIMIT {rng.randrange(1, 50)}"
    return sql, params


def reply(conn: psycopg.Connection, sql: str, params: list, prepare: bool, binary: bool) -> tuple:
    with conn.cursor(binary=binary) as cur:
        cur.execute(sql, params or None, prepare=prepare)
        # repr keeps a numeric's scale (Decimal("1.50") == Decimal("1.5") would hide a difference).
        return [(d.name, d.type_code) for d in cur.description], repr(cur.fetchall())


def compare(direct: psycopg.Connection, proxied: psycopg.Connection, rng: random.Random, count: int,
            zone: str) -> int:
    mismatches = []
    nonempty = 0
    for _ in range(count):
        sql, params = random_query(rng, zone)
        prepare = bool(params) and rng.random() < 0.5
        binary = rng.random() < 0.3
        want = reply(direct, sql, params, prepare=False, binary=binary)
        got = reply(proxied, sql, params, prepare=prepare, binary=binary)
        nonempty += want[1] != "[]"
        if got != want:
            mismatches.append((sql, params, want[0], got[0], want[1][:300], got[1][:300]))
    assert not mismatches, f"{len(mismatches)} of {count} replies differ; first: {mismatches[0]}"
    return nonempty


def test_every_generated_shape_is_rewritten(rewriting_proxy, rewrite_db):
    rng = random.Random(7)
    admin = psycopg.connect(rewriting_proxy.dsn(db="tidegate"), autocommit=True)
    for _ in range(200):
        sql, _params = random_query(rng, "UTC")
        if "%s" in sql:
            continue
        rollup, rewritten, reason, _text = explain(rewriting_proxy, sql, admin)
        several = ("GROUP BY bucket, symbol" not in sql and "symbol = '" not in sql
                   and not re.search(r"symbol IN \('[A-Z]+'\)", sql))
        if several and ("first(" in sql or "last(" in sql):
            assert rewritten == "no" and "first/last" in reason, (sql, reason)
            continue
        assert rewritten == "yes", (sql, reason)
        width = sql.split("time_bucket('", 1)[1].split("'", 1)[0]
        assert rollup == EXPECTED_ROLLUP[width], sql


def test_rewritten_replies_equal_raw_replies(rewriting_proxy, rewrite_db):
    wait_for_rewrites(rewriting_proxy, rewrite_db)
    rng = random.Random(20261201)
    direct = psycopg.connect(h.direct_dsn(db=rewrite_db), autocommit=True, prepare_threshold=h.NEVER_AUTO_PREPARE)
    proxied = psycopg.connect(rewriting_proxy.dsn(db=rewrite_db), autocommit=True,
                              prepare_threshold=h.NEVER_AUTO_PREPARE)
    writer = psycopg.connect(h.direct_dsn(db=rewrite_db), autocommit=True)
    before = rewrites(rewriting_proxy)
    total = nonempty = 0
    try:
        for round_, zone in enumerate(["UTC", "America/New_York", "Asia/Kolkata", "UTC"]):
            for conn in (direct, proxied):
                conn.execute(f"SET TimeZone = '{zone}'")
            # Fresh rollups.
            nonempty += compare(direct, proxied, rng, 60, zone)
            # Stale rollups: late ticks in the materialized past, an update and a delete, no refresh yet.
            late = make_ticks(rng, 500, START + timedelta(hours=rng.randrange(DAYS * 24)), 3600, 10_000_000 * (round_ + 1))
            copy_ticks(writer, late)
            writer.execute("UPDATE ticks SET price = price * 1.01 WHERE symbol = %s AND ts >= %s AND ts < %s",
                           (rng.choice(SYMBOLS), START + timedelta(days=1), START + timedelta(days=1, minutes=7)))
            writer.execute("DELETE FROM ticks WHERE symbol = %s AND ts >= %s AND ts < %s",
                           (rng.choice(SYMBOLS), START + timedelta(days=2, hours=3), START + timedelta(days=2, hours=3, minutes=2)))
            assert writer.execute("SELECT count(*) FROM tidegate_bars_dirty").fetchone()[0] > 0
            nonempty += compare(direct, proxied, rng, 60, zone)
            # Refreshed again.
            writer.execute("SELECT tidegate_refresh_bars()")
            nonempty += compare(direct, proxied, rng, 30, zone)
            total += 150
    finally:
        direct.close()
        proxied.close()
        writer.close()
    # Nearly every query was rewritten (each prepared statement counts at its Parse), and most
    # replies had rows: the comparison is not of empty sets.
    assert rewrites(rewriting_proxy) - before >= total * 0.5
    assert nonempty >= total * 0.7, (nonempty, total)


def test_rollups_serve_the_materialized_part(rewriting_proxy, rewrite_db):
    """With fresh rollups a whole-day aggregate reads bars, not a day of ticks."""
    sql = ("SELECT time_bucket('1 hour', ts), max(price), count(*) FROM ticks WHERE symbol = 'AAA' "
           f"AND ts >= '{(START + timedelta(days=1)).isoformat()}' AND ts < '{(START + timedelta(days=2)).isoformat()}' GROUP BY 1")
    _rollup, _yes, _reason, text = explain(rewriting_proxy, sql)
    with psycopg.connect(h.direct_dsn(db=rewrite_db), autocommit=True) as c:
        c.execute("SELECT tidegate_refresh_bars()")
        plan = "\n".join(r[0] for r in c.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + text))
    # The raw edge scans return no rows: the day is aligned to the hour and wholly materialized.
    raw_rows = [line for line in plan.splitlines() if "ticks" in line and "actual rows=" in line]
    assert all("actual rows=0" in line for line in raw_rows), plan
    assert "bars_1h" in plan, plan


def test_a_database_without_the_rollups_is_not_rewritten(rewriting_proxy, lab):
    with h.scratch_database("tg_it_rw_plain") as name:
        with psycopg.connect(h.direct_dsn(db=name), autocommit=True) as c:
            c.execute("CREATE FUNCTION time_bucket(w interval, t timestamptz) RETURNS timestamptz LANGUAGE sql "
                      "IMMUTABLE AS $$ SELECT to_timestamp(floor(extract(epoch FROM t) / extract(epoch FROM w)) "
                      "* extract(epoch FROM w)) $$")
            c.execute("CREATE TABLE ticks (ts timestamptz, symbol text, price numeric, size bigint)")
            c.execute("INSERT INTO ticks VALUES (now(), 'A', 1, 1), (now(), 'A', 3, 2)")
        sql = "SELECT time_bucket('5 minutes', ts), max(price), sum(size) FROM ticks GROUP BY 1"
        with psycopg.connect(rewriting_proxy.dsn(db=name), autocommit=True) as c:
            before = rewrites(rewriting_proxy)
            for _ in range(20):
                got = c.execute(sql).fetchall()
                assert [tuple(r[1:]) for r in got] == [(3, 3)]
                time.sleep(0.02)
            assert rewrites(rewriting_proxy) == before


def test_explain_rewrite_says_why_not(rewriting_proxy):
    rollup, rewritten, reason, text = explain(
        rewriting_proxy, "SELECT time_bucket('5 minutes', ts), max(price) FROM ticks WHERE exchange = 'X' GROUP BY 1")
    assert (rollup, rewritten) == (None, "no") and "exchange" in reason
    with psycopg.connect(rewriting_proxy.dsn(db="tidegate"), autocommit=True) as c:
        with pytest.raises(psycopg.errors.SyntaxError):
            c.execute("EXPLAIN REWRITE")


def test_retention_takes_the_bars_of_dropped_ticks_along(rewriting_proxy, lab, tmp_path):
    """Retention drops old tick partitions and deletes old DEFAULT-partition rows; the rewrite must
    not answer from bars whose ticks are gone (before or after the next refresh)."""
    with h.scratch_database("tg_it_rw_ret") as name:
        done = h.run_migrate(h.write_tidegate_config(tmp_path), name)
        assert done.returncode == 0, done.stderr
        with psycopg.connect(h.direct_dsn(db=name), autocommit=True) as c:
            c.execute("select tidegate_ensure_partitions('ticks', '2026-10-01', 2)")
            # Two days in daily partitions, a third in the DEFAULT partition.
            c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) select '2026-10-01'::timestamptz "
                      "+ i * interval '37 seconds', 'AAA', 100 + i % 7, 1, 'X', i from generate_series(0, 3 * 86400 / 37) i")
            c.execute("select tidegate_refresh_bars()")
            dropped = c.execute("select action, count(*) from tidegate_drop_partitions_before('ticks', "
                                "'2026-10-03 12:00+00') group by 1 order by 1").fetchall()
            assert dropped == [("deleted", 1), ("dropped", 2)]
        wait_for_rewrites(rewriting_proxy, name)
        sql = ("SELECT time_bucket('1 hour', ts), max(price), count(*) FROM ticks WHERE symbol = 'AAA' "
               "AND ts >= '2026-10-01' AND ts < '2026-10-05' GROUP BY 1 ORDER BY 1")
        with psycopg.connect(h.direct_dsn(db=name), autocommit=True) as direct, \
                psycopg.connect(rewriting_proxy.dsn(db=name), autocommit=True) as proxied:
            for _ in range(2):
                want = direct.execute(sql).fetchall()
                assert want and min(r[0] for r in want) >= datetime(2026, 10, 3, 12, tzinfo=timezone.utc)
                assert proxied.execute(sql).fetchall() == want
                direct.execute("select tidegate_refresh_bars()")


def test_rewritten_reads_agree_with_raw_reads_while_ticks_arrive_and_refreshes_run(rewriting_proxy, rewrite_db):
    """A writer inserts late ticks into the materialized past and refreshes the rollups, over and over,
    while readers through Tidegate run the rewritten aggregate and the same aggregate in a form the
    rewrite leaves alone (an extra condition on size), both in one REPEATABLE READ transaction: one
    snapshot, so they must agree every time, whatever the writer was doing."""
    wait_for_rewrites(rewriting_proxy, rewrite_db)
    stop = threading.Event()
    errors: list[BaseException] = []
    writes = [0]

    def writer() -> None:
        rng = random.Random(99)
        try:
            with psycopg.connect(h.direct_dsn(db=rewrite_db), autocommit=True) as c:
                while not stop.is_set():
                    start = START + timedelta(hours=rng.randrange(DAYS * 24))
                    copy_ticks(c, make_ticks(rng, 50, start, 3600, 50_000_000 + writes[0] * 100))
                    writes[0] += 1
                    if writes[0] % 3 == 0:
                        c.execute("SELECT tidegate_refresh_bars()")
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    thread = threading.Thread(target=writer, daemon=True)
    before = rewrites(rewriting_proxy)
    thread.start()
    rng = random.Random(5)
    disagreements = []
    compared = 0
    try:
        with psycopg.connect(rewriting_proxy.dsn(db=rewrite_db)) as c:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and compared < 300:
                width = rng.choice(["5 minutes", "1 hour", "1 day"])
                symbol = rng.choice(SYMBOLS)
                lo = START + timedelta(seconds=rng.randrange(DAYS * 86400))
                hi = lo + timedelta(hours=rng.choice([1, 6, 30]))
                rewritten = (f"SELECT time_bucket('{width}', ts), first(price, ts), max(price), min(price), "
                             f"last(price, ts), sum(size), count(*) FROM ticks WHERE symbol = %s "
                             f"AND ts >= %s AND ts < %s GROUP BY 1 ORDER BY 1")
                raw = rewritten.replace("AND ts >= %s", "AND size >= 0 AND ts >= %s")
                c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                got = repr(c.execute(rewritten, (symbol, lo, hi)).fetchall())
                want = repr(c.execute(raw, (symbol, lo, hi)).fetchall())
                c.execute("COMMIT")
                compared += 1
                if got != want:
                    disagreements.append((width, symbol, lo, hi))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert writes[0] >= 3, "the writer barely ran; the test proved nothing"
    assert compared >= 50 and not disagreements, (compared, disagreements[:3])
    assert rewrites(rewriting_proxy) - before >= compared
