"""Insert coalescing (`relations.<name>.batch`), on the lab: autocommit single-statement
`INSERT INTO ticks ... VALUES ...` from many clients is buffered and flushed to the primary as one
statement per batch; every client still gets its own `INSERT 0 n`, only after the batch committed,
and only the sender of a failing row gets PostgreSQL's error for it.

The module gets a scratch database migrated by `tidegate migrate` and two Tidegate instances of its
own, both batching ticks with the rules `price_positive` (price > 0) and `ts_not_future` (ts at most
5 s ahead): `err` with `on_conflict: error`, `ign` with `on_conflict: ignore`. Every test writes rows
of its own symbol (unique per test), so the tests share the table without seeing each other's rows;
SHOW BATCHES counters are compared before and after (nothing else writes meanwhile). Tests that
need another config (a crash, the cache, the lab's replicas, an unreachable primary) start their own
instance.

Rows are compared with what PostgreSQL stores or answers directly (a direct insert of the same row
in a rolled-back transaction for errors, the same statements on another symbol for values)."""

from __future__ import annotations

import itertools
import random
import secrets
import signal
import socket
import struct
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import tgharness as h

pytestmark = pytest.mark.requires_tidegate("insert coalescing (relations.ticks.batch, SHOW BATCHES)")

COLUMNS = "(ts, symbol, price, size, exchange, trade_id)"
ROW_PLACEHOLDERS = "(%s, %s, %s, %s, %s, %s)"
# Rows of the tests are in November 2026, well in the past (ts_not_future) and in the DEFAULT
# partition (migrate creates daily partitions from today on).
BASE = datetime(2026, 11, 5, tzinfo=timezone.utc)
SHOW_BATCHES_COLUMNS = ("database", "relation", "rows", "batches", "avg_rows", "rejects", "duplicates",
                        "errors", "queued_rows")
BATCH_METRICS = ("tidegate_batch_rows_total", "tidegate_batch_batches_total", "tidegate_batch_rejects_total",
                 "tidegate_batch_duplicates_total", "tidegate_batch_errors_total")
CONNECTION_ERRORS = ("57P03",)  # plus every 08xxx

# trade_ids: unique in the run, below 2^57 (the pass-through test multiplies some by 100)
_ids = itertools.count(random.Random().randrange(1, 1 << 30) << 20)


def next_id() -> int:
    return next(_ids)  # itertools.count is atomic under the GIL


def new_symbol(tag: str) -> str:
    return f"{tag}_{secrets.token_hex(3)}".upper()


def make_row(symbol: str, trade_id: int | None = None, **changes: Any) -> tuple:
    """(ts, symbol, price, size, exchange, trade_id), deterministic per trade_id."""
    tid = next_id() if trade_id is None else trade_id
    row = {"ts": BASE + timedelta(microseconds=(tid % 86_400_000) * 1000 + tid % 997),
           "symbol": symbol, "price": Decimal(f"{100 + tid % 50}.{tid % 100:02d}"),
           "size": tid % 1000 + 1, "exchange": "X", "trade_id": tid}
    row.update(changes)
    return (row["ts"], row["symbol"], row["price"], row["size"], row["exchange"], row["trade_id"])


def insert_sql(n: int = 1, suffix: str = "") -> str:
    return f"INSERT INTO ticks {COLUMNS} VALUES " + ", ".join([ROW_PLACEHOLDERS] * n) + suffix


def flat(rows: list[tuple]) -> list[Any]:
    return [v for r in rows for v in r]


def literal_params(rows: list[tuple]) -> list[Any]:
    """Parameters for a ClientCursor: timestamps as strings, so the statement text has plain
    literals ('2026-11-05 ...+00:00', not '...'::timestamptz)."""
    return [v.isoformat() if isinstance(v, datetime) else v for v in flat(rows)]


def connect(proxy_or_dsn: h.Proxy | str, db: str, **kw: Any) -> psycopg.Connection:
    dsn = proxy_or_dsn.dsn(db=db) if isinstance(proxy_or_dsn, h.Proxy) else proxy_or_dsn
    return psycopg.connect(dsn, autocommit=kw.pop("autocommit", True),
                           prepare_threshold=h.NEVER_AUTO_PREPARE, **kw)


def direct(db: str, **kw: Any) -> psycopg.Connection:
    return connect(h.direct_dsn(db=db), db, **kw)


def error_fields(e: psycopg.Error) -> dict[str, Any]:
    """What a client sees of PostgreSQL's error (the fields a direct insert would give)."""
    d = e.diag
    return {"sqlstate": e.sqlstate, "severity": d.severity_nonlocalized or d.severity,
            "message": d.message_primary, "detail": d.message_detail, "hint": d.message_hint,
            "schema": d.schema_name, "table": d.table_name, "column": d.column_name,
            "constraint": d.constraint_name}


def direct_error(db: str, sql: str, params: Any) -> dict[str, Any]:
    """The error PostgreSQL gives for `sql` directly, in a transaction that is rolled back."""
    with direct(db, autocommit=False) as c:
        try:
            c.execute(sql, params)
        except psycopg.Error as e:
            return error_fields(e)
        finally:
            c.rollback()
    raise AssertionError(f"directly, {sql!r} {params!r} did not fail")


def is_connection_error(sqlstate: str | None) -> bool:
    return bool(sqlstate) and (sqlstate.startswith("08") or sqlstate in CONNECTION_ERRORS)


def trade_ids(db: str, symbol: str) -> list[int]:
    with direct(db) as c:
        return [r[0] for r in c.execute("SELECT trade_id FROM ticks WHERE symbol = %s ORDER BY trade_id",
                                        (symbol,)).fetchall()]


def _number(v: Any) -> Any:
    """A counter as a float ('' / NULL: 0); a column that is not a number (e.g. a reason) as text."""
    if v is None or v == "":
        return 0.0
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def batch_stats(proxy: h.Proxy, db: str, relation: str = "ticks") -> dict[str, float]:
    """SHOW BATCHES of (db, relation), numbers as floats (other columns as text); zeros while it has
    no row yet."""
    _, names, rows = h.admin_query(proxy, "SHOW BATCHES")
    missing = [c for c in SHOW_BATCHES_COLUMNS if c not in names]
    assert not missing, f"SHOW BATCHES lacks columns {missing}: {names}"
    for r in rows:
        d = dict(zip(names, r))
        if str(d["database"]) == db and str(d["relation"]) == relation:
            return {k: _number(v) for k, v in d.items() if k not in ("database", "relation")}
    return {c: 0.0 for c in SHOW_BATCHES_COLUMNS[2:]}


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after[key] - before[key]


def batch_overrides(on_conflict: str = "error", **batch: Any) -> dict[str, Any]:
    spec = {"enabled": True, "max_rows": 5000, "max_bytes": 4194304, "max_delay_ms": 5,
            "max_queue_bytes": 67108864, "on_conflict": on_conflict,
            "rules": {"price_positive": {"column": "price", "greater_than": 0},
                      "ts_not_future": {"column": "ts", "max_future_ms": 5000}}}
    spec.update(batch)
    return {"relations.ticks.batch": spec, "relations.ticks.rewrite": False,
            "storage.maintenance_interval_ms": 0}


def require_batching(proxy: h.Proxy, db: str) -> None:
    """The instance coalesces inserts into ticks: SHOW BATCHES exists and counts a single-row insert
    (with to_timestamp($1), so the function catalog has loaded as well). Fails, with the reason,
    when the binary lacks the feature (an older binary ignores `relations.ticks.batch`)."""
    try:
        batch_stats(proxy, db)
    except psycopg.Error as e:
        pytest.fail(f"SHOW BATCHES failed on {proxy.name} ({e.sqlstate}: {e}): the binary "
                    f"{h.tidegate_binary()} lacks insert coalescing", pytrace=False)
    sql = f"INSERT INTO ticks {COLUMNS} VALUES (to_timestamp(%s), %s, %s, %s, %s, %s)"
    deadline = time.monotonic() + 10
    with connect(proxy, db) as c:
        while True:
            before = batch_stats(proxy, db)
            cur = c.execute(sql, (1762400000 + next_id() % 100000, "WARMUP", 1, 1, "X", next_id()))
            assert cur.statusmessage == "INSERT 0 1", cur.statusmessage
            if delta(before, batch_stats(proxy, db), "rows") >= 1:
                return
            if time.monotonic() >= deadline:
                pytest.fail(f"{proxy.name}: single-row inserts into ticks are not coalesced (SHOW BATCHES "
                            f"rows unchanged for 10 s): {batch_stats(proxy, db)}", pytrace=False)
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def batch_db(lab: None, tmp_path_factory: pytest.TempPathFactory):
    with h.scratch_database("tg_it_batch") as name:
        done = h.run_migrate(h.write_tidegate_config(tmp_path_factory.mktemp("batch")), name)
        assert done.returncode == 0, done.stderr
        yield name


@pytest.fixture(scope="module")
def err(module_tidegate, batch_db: str) -> h.Proxy:
    p = module_tidegate(batch_overrides("error"), name="batch-error")
    require_batching(p, batch_db)
    return p


@pytest.fixture(scope="module")
def ign(module_tidegate, batch_db: str) -> h.Proxy:
    p = module_tidegate(batch_overrides("ignore"), name="batch-ignore")
    require_batching(p, batch_db)
    return p


# --------------------------------------------------------------------------------------------
# 1. Exact command tags under concurrency


@pytest.mark.parametrize("on_conflict", ["error", "ignore"])
def test_concurrent_clients_get_exact_tags(request, batch_db: str, on_conflict: str):
    """16 clients × 150 statements of 1–5 rows, in turn as simple-protocol literals (ClientCursor),
    unnamed extended (Parse/Bind/Execute with parameters) and named prepared statements: every tag is
    `INSERT 0 n` for the n rows sent, the table holds exactly the rows sent, and there were fewer
    batches than statements (inserts of different clients were coalesced)."""
    proxy = request.getfixturevalue("err" if on_conflict == "error" else "ign")
    symbol = new_symbol("TAGS")
    clients, per_client = 16, 150
    forms = ("simple", "extended", "prepared")
    sent: list[list[tuple]] = [[] for _ in range(clients)]  # (form, n, rowcount, statusmessage)
    expected: set[int] = set()
    lock = threading.Lock()
    start = threading.Barrier(clients, timeout=60)
    before = batch_stats(proxy, batch_db)

    def client(i: int) -> None:
        rng = random.Random(i)
        with connect(proxy, batch_db) as c:
            literal = psycopg.ClientCursor(c)
            cur = c.cursor()
            start.wait()
            for k in range(per_client):
                n = rng.randint(1, 5)
                rows = [make_row(symbol) for _ in range(n)]
                form = forms[(i + k) % 3]
                if form == "simple":
                    literal.execute(insert_sql(n), literal_params(rows))
                    done = literal
                else:
                    cur.execute(insert_sql(n), flat(rows), prepare=form == "prepared")
                    done = cur
                sent[i].append((form, n, done.rowcount, done.statusmessage))
                with lock:
                    expected.update(r[5] for r in rows)

    errors = h.run_threads(clients, client, timeout=600)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    wrong = [(i, k, s) for i, per in enumerate(sent) for k, s in enumerate(per)
             if s[2] != s[1] or s[3] != f"INSERT 0 {s[1]}"]
    statements = sum(len(s) for s in sent)
    total = sum(s[1] for per in sent for s in per)
    assert not wrong, (f"{len(wrong)} of {statements} statements got a wrong tag; first (client, index, "
                       f"(form, rows sent, rowcount, tag)): {wrong[:10]}")
    stored = trade_ids(batch_db, symbol)
    assert len(stored) == total and set(stored) == expected, \
        f"the table holds {len(stored)} rows of {symbol}, {total} were acknowledged; " \
        f"missing {sorted(expected - set(stored))[:10]}, unexpected {sorted(set(stored) - expected)[:10]}"
    after = batch_stats(proxy, batch_db)
    rows, batches = delta(before, after, "rows"), delta(before, after, "batches")
    print(f"{statements} statements, {total} rows in {batches:.0f} batches "
          f"({rows / max(batches, 1):.1f} rows per batch; SHOW BATCHES avg_rows {after['avg_rows']})")
    assert rows == total, f"SHOW BATCHES counted {rows} rows, {total} were inserted: {before} -> {after}"
    assert 0 < batches < statements, \
        f"{batches:.0f} batches for {statements} statements: inserts were not coalesced ({before} -> {after})"
    assert after["avg_rows"] > 1, after
    assert after["queued_rows"] == 0, f"rows still queued after every insert was acknowledged: {after}"


def test_acknowledged_rows_are_committed(err: h.Proxy, batch_db: str):
    """An acknowledgement comes after the batch's COMMIT: 8 clients × 50 inserts, each client reads
    its row on the primary (its own direct connection) right after the tag, and finds it."""
    symbol = new_symbol("ACK")
    unseen: list[tuple[int, int]] = []

    def client(i: int) -> None:
        with connect(err, batch_db) as c, direct(batch_db) as d:
            for k in range(50):
                row = make_row(symbol)
                assert c.execute(insert_sql(1), row, prepare=k % 2 == 0).statusmessage == "INSERT 0 1"
                if d.execute("SELECT count(*) FROM ticks WHERE symbol = %s AND trade_id = %s",
                             (symbol, row[5])).fetchone()[0] != 1:
                    unseen.append((i, row[5]))

    errors = h.run_threads(8, client, timeout=300)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    assert not unseen, f"{len(unseen)} acknowledged rows were not visible on the primary right after the tag: {unseen[:10]}"


def test_max_rows_caps_a_batch(tidegate_instance, batch_db: str):
    """max_rows: 3: 16 clients × 30 single-row inserts are coalesced (fewer batches than statements) but
    no batch has more than 3 rows (rows / batches <= 3, and p99_rows <= 3 where SHOW BATCHES has it)."""
    p = tidegate_instance(batch_overrides("error", max_rows=3), name="batch-max-rows")
    require_batching(p, batch_db)
    symbol = new_symbol("MAXR")
    before = batch_stats(p, batch_db)
    start = threading.Barrier(16, timeout=30)

    def client(i: int) -> None:
        with connect(p, batch_db) as c:
            start.wait()
            for k in range(30):
                assert c.execute(insert_sql(1), make_row(symbol), prepare=k % 2 == 0).statusmessage == "INSERT 0 1"

    errors = h.run_threads(16, client, timeout=300)
    after = batch_stats(p, batch_db)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    rows, batches = delta(before, after, "rows"), delta(before, after, "batches")
    print(f"max_rows 3: {rows:.0f} rows in {batches:.0f} batches; SHOW BATCHES {after}")
    assert rows == 480 and len(trade_ids(batch_db, symbol)) == 480, (before, after)
    assert 160 <= batches < 480, f"{batches:.0f} batches for 480 rows with max_rows 3: {before} -> {after}"
    if isinstance(after.get("p99_rows"), float):
        assert after["p99_rows"] <= 3, f"a batch had more than max_rows rows: {after}"


# --------------------------------------------------------------------------------------------
# 2. One bad row fails only its sender


def test_one_bad_row_among_10000_fails_only_its_sender(err: h.Proxy, batch_db: str):
    """10,000 single-row inserts from 20 clients; one row has size = -1, which no rule checks but
    the CHECK constraint ticks_size_check rejects. Its sender alone gets PostgreSQL's error, with the
    message and detail a direct insert of the same row gives; the 9,999 others are acknowledged and
    stored."""
    symbol = new_symbol("BAD")
    clients, per_client = 20, 500
    bad_at = (7, 250)
    rows = [[make_row(symbol, size=-1) if (i, k) == bad_at else make_row(symbol) for k in range(per_client)]
            for i in range(clients)]
    bad_row = rows[bad_at[0]][bad_at[1]]
    outcomes: dict[int, Any] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients, timeout=60)
    sql = insert_sql(1)
    before = batch_stats(err, batch_db)

    def client(i: int) -> None:
        with connect(err, batch_db) as c:
            start.wait()
            for row in rows[i]:
                try:
                    cur = c.execute(sql, row, prepare=i % 2 == 1)
                    got: Any = (cur.statusmessage, cur.rowcount)
                except psycopg.Error as e:
                    got = error_fields(e)
                with lock:
                    outcomes[row[5]] = got

    errors = h.run_threads(clients, client, timeout=900)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    failed = {tid: o for tid, o in outcomes.items() if isinstance(o, dict)}
    wrong = {tid: o for tid, o in outcomes.items() if not isinstance(o, dict) and o != ("INSERT 0 1", 1)}
    assert len(outcomes) == clients * per_client
    assert list(failed) == [bad_row[5]], \
        f"{len(failed)} statements failed (the bad row is {bad_row[5]}); first: {list(failed.items())[:5]}"
    assert not wrong, f"wrong tags: {list(wrong.items())[:5]}"
    got = failed[bad_row[5]]
    expected = direct_error(batch_db, sql, bad_row)
    assert expected["sqlstate"] == "23514" and 'violates check constraint "ticks_size_check"' in expected["message"]
    assert got == expected, f"through Tidegate {got}\n directly {expected}"
    stored = trade_ids(batch_db, symbol)
    assert len(stored) == clients * per_client - 1 and bad_row[5] not in stored, \
        f"{len(stored)} rows stored (expected {clients * per_client - 1}); bad row stored: {bad_row[5] in stored}"
    after = batch_stats(err, batch_db)
    assert delta(before, after, "errors") >= 1, f"the failed statement is not counted: {before} -> {after}"
    assert delta(before, after, "rows") == clients * per_client - 1, (before, after)
    assert delta(before, after, "batches") < clients * per_client, (before, after)


def test_multi_row_insert_of_one_client_is_atomic(err: h.Proxy, batch_db: str):
    """In 30 rounds, 8 clients insert at the same moment: one sends 3 rows whose middle row violates
    ticks_size_check, the others 2 good rows. The first never has any of its rows stored and gets
    PostgreSQL's error; the others always get INSERT 0 2."""
    symbol = new_symbol("ATOM")
    clients, rounds = 8, 30
    start = threading.Barrier(clients, timeout=60)
    outcomes: list[tuple[int, int, Any, list[int]]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with connect(err, batch_db) as c:
            for r in range(rounds):
                if i == 0:
                    rows = [make_row(symbol), make_row(symbol, size=-1), make_row(symbol)]
                else:
                    rows = [make_row(symbol), make_row(symbol)]
                start.wait()
                try:
                    cur = c.execute(insert_sql(len(rows)), flat(rows), prepare=r % 2 == 1)
                    got: Any = cur.statusmessage
                except psycopg.Error as e:
                    got = error_fields(e)
                with lock:
                    outcomes.append((i, r, got, [row[5] for row in rows]))

    errors = h.run_threads(clients, client, timeout=300)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    stored = set(trade_ids(batch_db, symbol))
    for i, r, got, ids in outcomes:
        if i == 0:
            assert isinstance(got, dict) and got["sqlstate"] == "23514", (r, got)
            assert got["constraint"] == "ticks_size_check", got
            assert not stored & set(ids), f"round {r}: rows {sorted(stored & set(ids))} of the failed statement were stored"
        else:
            assert got == "INSERT 0 2", (i, r, got)
            assert set(ids) <= stored, (i, r, ids)


# --------------------------------------------------------------------------------------------
# 3. Duplicates


def test_on_conflict_ignore_counts_duplicates_as_zero(ign: h.Proxy, batch_db: str):
    """on_conflict: ignore: a row already stored → INSERT 0 0 (extended and simple); 3 rows with one
    duplicate → INSERT 0 2; the same row twice in one statement → INSERT 0 1 (as ON CONFLICT DO
    NOTHING gives); two clients sending the same new row at once → one gets 1, the other 0; other
    errors are not ignored. SHOW BATCHES counts each duplicate."""
    symbol = new_symbol("IGN")
    existing = make_row(symbol)
    with direct(batch_db) as d:
        d.execute(insert_sql(1), existing)
    before = batch_stats(ign, batch_db)
    expected = {existing[5]}
    duplicates = 0
    with connect(ign, batch_db) as c:
        cur = c.execute(insert_sql(1), existing)
        assert (cur.statusmessage, cur.rowcount) == ("INSERT 0 0", 0)
        literal = psycopg.ClientCursor(c)
        literal.execute(insert_sql(1), literal_params([existing]))
        assert (literal.statusmessage, literal.rowcount) == ("INSERT 0 0", 0)
        duplicates += 2
        three = [make_row(symbol), existing, make_row(symbol)]
        cur = c.execute(insert_sql(3), flat(three), prepare=True)
        assert (cur.statusmessage, cur.rowcount) == ("INSERT 0 2", 2)
        expected |= {three[0][5], three[2][5]}
        duplicates += 1
        twice = make_row(symbol)
        with direct(batch_db, autocommit=False) as d:  # what PostgreSQL says for the same row twice
            same = make_row(new_symbol("IGNREF"))
            reference = d.execute(insert_sql(2, " ON CONFLICT DO NOTHING"), flat([same, same])).statusmessage
            d.rollback()
        assert reference == "INSERT 0 1"
        cur = c.execute(insert_sql(2), flat([twice, twice]))
        assert (cur.statusmessage, cur.rowcount) == (reference, 1)
        expected.add(twice[5])
        duplicates += 1
        with pytest.raises(psycopg.Error) as failure:
            c.execute(insert_sql(1), make_row(symbol, size=-1))
        assert failure.value.sqlstate == "23514", error_fields(failure.value)
        assert c.execute("SELECT 1").fetchone() == (1,)

    rounds = 20
    pair = [connect(ign, batch_db) for _ in range(2)]
    try:
        for r in range(rounds):
            row = make_row(symbol)
            start = threading.Barrier(2, timeout=30)
            got: list[Any] = [None, None]

            def send(i: int) -> None:
                start.wait()
                cur = pair[i].execute(insert_sql(1), row, prepare=i == 1)
                got[i] = (cur.statusmessage, cur.rowcount)

            errors = h.run_threads(2, send, timeout=60)
            assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
            assert sorted(got) == [("INSERT 0 0", 0), ("INSERT 0 1", 1)], f"round {r}: {got}"
            expected.add(row[5])
            duplicates += 1
    finally:
        for conn in pair:
            conn.close()
    stored = trade_ids(batch_db, symbol)
    assert sorted(stored) == sorted(expected), f"stored {stored}, expected {sorted(expected)}"
    after = batch_stats(ign, batch_db)
    assert delta(before, after, "duplicates") == duplicates, \
        f"SHOW BATCHES duplicates went {before['duplicates']} -> {after['duplicates']}, {duplicates} were sent"


def test_on_conflict_ignore_holds_for_statements_run_as_sent(ign: h.Proxy, batch_db: str):
    """Under on_conflict: ignore, statements that run as their client sent them still ignore duplicates:
    those of a shape that cannot be batched (setting `conditions`, a text[] column) and those isolated
    after their batch failed on another client's bad row. Each duplicate counts 0, the bad row gets its
    23514, the new rows are stored."""
    symbol = new_symbol("IGNSENT")
    existing = [make_row(symbol) for _ in range(8)]
    with direct(batch_db) as d:
        for row in existing:
            d.execute(insert_sql(1), row)
    seven = "INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id, conditions) VALUES (%s, %s, %s, %s, %s, %s, %s)"
    fresh = make_row(symbol)
    with connect(ign, batch_db) as c:
        cur = c.execute(seven, list(existing[0]) + [["@"]])
        assert (cur.statusmessage, cur.rowcount) == ("INSERT 0 0", 0)
        assert c.execute(seven, list(fresh) + [["F"]]).statusmessage == "INSERT 0 1"
    expected = {row[5] for row in existing} | {fresh[5]}
    # Eight duplicates and one bad row at once, several times: whenever they share a batch, it fails and
    # is split, and the duplicates run alone.
    conns = [connect(ign, batch_db) for _ in range(9)]
    try:
        for r in range(10):
            start = threading.Barrier(9, timeout=30)
            got: list[Any] = [None] * 9

            def send(i: int) -> None:
                start.wait()
                try:
                    row = existing[i] if i < 8 else make_row(symbol, size=-1)
                    got[i] = conns[i].execute(insert_sql(1), row).statusmessage
                except psycopg.Error as e:
                    got[i] = e.sqlstate

            errors = h.run_threads(9, send, timeout=60)
            assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
            assert got == ["INSERT 0 0"] * 8 + ["23514"], f"round {r}: {got}"
    finally:
        for conn in conns:
            conn.close()
    assert sorted(trade_ids(batch_db, symbol)) == sorted(expected)


def literal_insert(row: tuple) -> str:
    return (f"INSERT INTO ticks {COLUMNS} VALUES ('{row[0].isoformat()}', '{row[1]}', {row[2]}, {row[3]}, "
            f"'{row[4]}', {row[5]})")


def test_pipelined_inserts_and_a_read_keep_their_order(err: h.Proxy, batch_db: str):
    """A client that writes 20 INSERTs, a SELECT and 10 more INSERTs in one go (simple queries, without
    waiting): the first 20 go to the batcher together, the replies come back in the order sent, and the
    SELECT sees the 20 rows acknowledged before it. A second client that writes 30 INSERTs and hangs up
    before reading leaves nothing queued, and the proxy goes on."""
    symbol = new_symbol("PIPE")
    rows = [make_row(symbol) for _ in range(30)]
    before = batch_stats(err, batch_db)
    with h.RawConn(err.host, err.port, timeout=30) as raw:
        assert raw.startup("tidegate", batch_db, password="tidegate").end == "ready"
        payload = b"".join(h.message(b"Q", literal_insert(r).encode() + b"\0") for r in rows[:20])
        payload += h.message(b"Q", f"SELECT count(*) FROM ticks WHERE symbol = '{symbol}'".encode() + b"\0")
        payload += b"".join(h.message(b"Q", literal_insert(r).encode() + b"\0") for r in rows[20:])
        raw.send(payload)
        replies = [raw.read_until_ready(timeout=30) for _ in range(31)]
    assert all(r.end == "ready" and not r.errors for r in replies), [r.describe() for r in replies if r.errors or r.end != "ready"]
    tags = [next((p[:-1].decode() for t, p in r.messages if t == "C"), None) for r in replies]
    assert tags == ["INSERT 0 1"] * 20 + ["SELECT 1"] + ["INSERT 0 1"] * 10, tags
    row = next(p for t, p in replies[20].messages if t == "D")
    (length,) = struct.unpack("!i", row[2:6])
    assert row[6:6 + length] == b"20", f"the SELECT saw {row[6:6 + length]!r} rows, 20 were acknowledged before it"
    after = batch_stats(err, batch_db)
    # The 20 before the SELECT are batched; those already sent behind a statement that went to a server
    # connection follow it there, in order (batched only if they arrive after it was answered).
    assert 20 <= delta(before, after, "rows") <= 30, f"{before} -> {after}"
    assert delta(before, after, "batches") < 20, f"the pipelined INSERTs were not coalesced: {before} -> {after}"
    assert sorted(trade_ids(batch_db, symbol)) == sorted(r[5] for r in rows)

    gone = new_symbol("GONE")
    with h.RawConn(err.host, err.port, timeout=30) as raw:
        assert raw.startup("tidegate", batch_db, password="tidegate").end == "ready"
        raw.send(b"".join(h.message(b"Q", literal_insert(make_row(gone)).encode() + b"\0") for _ in range(30)))
    assert h.wait_for(lambda: batch_stats(err, batch_db)["queued_rows"] == 0, 15), batch_stats(err, batch_db)
    assert len(trade_ids(batch_db, gone)) <= 30
    with connect(err, batch_db) as c:
        assert c.execute(insert_sql(1), make_row(symbol)).statusmessage == "INSERT 0 1"


def test_on_conflict_error_duplicate_fails_only_its_sender(err: h.Proxy, batch_db: str):
    """on_conflict: error: in 10 rounds one client re-sends a stored row while 7 others insert new
    rows at the same moment: the duplicate's sender gets 23505 with PostgreSQL's message and detail,
    the others commit. Then two clients send the same new row at once: one commits, the other gets
    23505."""
    symbol = new_symbol("DUP")
    existing = make_row(symbol)
    with direct(batch_db) as d:
        d.execute(insert_sql(1), existing)
    reference = direct_error(batch_db, insert_sql(1), existing)
    assert reference["sqlstate"] == "23505"
    clients, rounds = 8, 10
    start = threading.Barrier(clients, timeout=60)
    outcomes: list[tuple[int, int, Any, int]] = []
    lock = threading.Lock()
    before = batch_stats(err, batch_db)

    def client(i: int) -> None:
        with connect(err, batch_db) as c:
            for r in range(rounds):
                row = existing if i == 0 else make_row(symbol)
                start.wait()
                try:
                    cur = c.execute(insert_sql(1), row, prepare=r % 2 == 0)
                    got: Any = cur.statusmessage
                except psycopg.Error as e:
                    got = error_fields(e)
                with lock:
                    outcomes.append((i, r, got, row[5]))

    errors = h.run_threads(clients, client, timeout=300)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    stored = set(trade_ids(batch_db, symbol))
    for i, r, got, tid in outcomes:
        if i == 0:
            assert got == reference, f"round {r}: through Tidegate {got}\n directly {reference}"
        else:
            assert got == "INSERT 0 1", (i, r, got)
            assert tid in stored, (i, r, tid)
    assert len(stored) == 1 + (clients - 1) * rounds

    pair = [connect(err, batch_db) for _ in range(2)]
    try:
        for r in range(10):
            row = make_row(symbol)
            both = threading.Barrier(2, timeout=30)
            got2: list[Any] = [None, None]

            def send(i: int) -> None:
                both.wait()
                try:
                    got2[i] = pair[i].execute(insert_sql(1), row).statusmessage
                except psycopg.Error as e:
                    got2[i] = error_fields(e)

            errors = h.run_threads(2, send, timeout=60)
            assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
            ok = [g for g in got2 if g == "INSERT 0 1"]
            failed = [g for g in got2 if isinstance(g, dict)]
            assert len(ok) == 1 and len(failed) == 1, f"round {r}: {got2}"
            assert failed[0] == direct_error(batch_db, insert_sql(1), row), failed[0]
            assert row[5] in trade_ids(batch_db, symbol)
    finally:
        for conn in pair:
            conn.close()
    after = batch_stats(err, batch_db)
    # (whether SHOW BATCHES counts a duplicate with on_conflict: error as an error or a duplicate)
    counted = delta(before, after, "errors") + delta(before, after, "duplicates")
    assert counted >= rounds + 10, f"{rounds + 10} duplicates refused; SHOW BATCHES {before} -> {after}"


# --------------------------------------------------------------------------------------------
# 4. Validation rules


def test_rules_reject_before_batching(err: h.Proxy, batch_db: str):
    """A row a rule rejects gets ERROR 23514 `new row for relation "ticks" violates rule "<name>"`,
    nothing of its statement is stored, the connection stays usable, and SHOW BATCHES counts it."""
    symbol = new_symbol("RULE")
    now = datetime.now(timezone.utc)
    cases = [
        ("simple", [make_row(symbol, price=Decimal(0))], "price_positive"),
        ("extended", [make_row(symbol, price=Decimal(0))], "price_positive"),
        ("prepared", [make_row(symbol, price=Decimal("-5"))], "price_positive"),
        ("extended", [make_row(symbol, ts=now + timedelta(hours=1))], "ts_not_future"),
        ("simple", [make_row(symbol, ts=now + timedelta(hours=1))], "ts_not_future"),
        ("extended", [make_row(symbol), make_row(symbol, price=Decimal(0)), make_row(symbol)], "price_positive"),
        ("simple", [make_row(symbol), make_row(symbol, ts=now + timedelta(hours=1))], "ts_not_future"),
        ("to_timestamp", [make_row(symbol, ts=now + timedelta(hours=1))], "ts_not_future"),
    ]
    accepted: set[int] = set()
    rejected: set[int] = set()
    before = batch_stats(err, batch_db)
    with connect(err, batch_db) as c:
        literal = psycopg.ClientCursor(c)
        for form, rows, rule in cases:
            with pytest.raises(psycopg.Error) as failure:
                if form == "simple":
                    literal.execute(insert_sql(len(rows)), literal_params(rows))
                elif form == "to_timestamp":  # an immutable function of a parameter is evaluated too
                    c.execute(f"INSERT INTO ticks {COLUMNS} VALUES (to_timestamp(%s), %s, %s, %s, %s, %s)",
                              [rows[0][0].timestamp()] + list(rows[0][1:]))
                else:
                    c.execute(insert_sql(len(rows)), flat(rows), prepare=form == "prepared")
            e = failure.value
            assert (e.sqlstate, e.diag.severity_nonlocalized or e.diag.severity) == ("23514", "ERROR"), \
                (form, rule, error_fields(e))
            assert e.diag.message_primary == f'new row for relation "ticks" violates rule "{rule}"', \
                (form, rule, error_fields(e))
            rejected |= {r[5] for r in rows}
            assert not c.closed and c.info.transaction_status.name == "IDLE"
            good = make_row(symbol)
            cur = c.execute(insert_sql(1), good)
            assert cur.statusmessage == "INSERT 0 1", f"the statement after a rejected {form} insert"
            accepted.add(good[5])
        # Within the bounds: 1 s ahead (max_future_ms 5000) and an hour ago.
        for ts in (datetime.now(timezone.utc) + timedelta(seconds=1), now - timedelta(hours=1)):
            row = make_row(symbol, ts=ts)
            assert c.execute(insert_sql(1), row).statusmessage == "INSERT 0 1", ts
            accepted.add(row[5])
    stored = set(trade_ids(batch_db, symbol))
    assert stored == accepted, f"stored rows of rejected statements: {sorted(stored & rejected)}; " \
                               f"missing accepted: {sorted(accepted - stored)}"
    after = batch_stats(err, batch_db)
    assert delta(before, after, "rejects") >= len(cases), \
        f"{len(cases)} rejected statements, SHOW BATCHES rejects {before['rejects']} -> {after['rejects']}"


def test_privileges_and_search_path_are_the_senders(err: h.Proxy, batch_db: str):
    """A batched row is inserted with its sender's rights and name resolution: a role without INSERT on
    ticks (tg_md5) gets PostgreSQL's 42501 and nothing is stored; a session whose search_path puts
    another schema's ticks first inserts there, as it would directly."""
    symbol = new_symbol("PRIV")
    row = make_row(symbol)
    with psycopg.connect(h.direct_dsn(db=batch_db, user="tg_md5"), autocommit=True) as d:
        with pytest.raises(psycopg.Error) as failure:
            d.execute(insert_sql(1), row)
        reference = error_fields(failure.value)
    assert reference["sqlstate"] == "42501", reference
    with psycopg.connect(err.dsn(db=batch_db, user="tg_md5", password="tg_md5"), autocommit=True) as c:
        for prepare in (False, True):
            with pytest.raises(psycopg.Error) as failure:
                c.execute(insert_sql(1), row, prepare=prepare)
            assert error_fields(failure.value) == reference
    assert trade_ids(batch_db, symbol) == []

    schema = h.unique_name("tg_it_s").lower()
    with direct(batch_db) as d:
        d.execute(f"CREATE SCHEMA {schema}")
        d.execute(f"CREATE TABLE {schema}.ticks (LIKE public.ticks INCLUDING ALL)")
    try:
        with connect(err, batch_db) as c:
            c.execute(f"SET search_path = {schema}, public")
            other = make_row(symbol)
            assert c.execute(insert_sql(1), other).statusmessage == "INSERT 0 1"
            c.execute("RESET search_path")
            assert c.execute(insert_sql(1), row).statusmessage == "INSERT 0 1"
        with direct(batch_db) as d:
            assert d.execute(f"SELECT trade_id FROM {schema}.ticks").fetchall() == [(other[5],)]
        assert trade_ids(batch_db, symbol) == [row[5]]
    finally:
        with direct(batch_db) as d:
            d.execute(f"DROP SCHEMA {schema} CASCADE")


# --------------------------------------------------------------------------------------------
# 5. Pass-through


def pass_through_steps(symbol: str, ids: list[int], future: datetime) -> list[tuple[str, Any, str]]:
    """(sql, params, cursor) steps, none of them batchable; `cursor` is 'literal' (ClientCursor,
    simple protocol) or 'params' (extended protocol)."""
    s = symbol
    t = "'2026-11-06 00:00:%02d+00'"
    row0 = (datetime(2026, 11, 6, 1, tzinfo=timezone.utc), s, Decimal("10.5"), 3, "X", ids[0])
    return [
        (insert_sql(1, " RETURNING trade_id, price, size"), row0, "params"),
        (f"INSERT INTO ticks {COLUMNS} VALUES ({t % 1}, '{s}', 11, 1, 'X', {ids[1]}), "
         f"({t % 2}, '{s}', 12, 2, 'Y', {ids[2]}) RETURNING trade_id, exchange", None, "literal"),
        ("BEGIN", None, "literal"),
        (f"INSERT INTO ticks {COLUMNS} VALUES ({t % 3}, '{s}', 13, 1, 'X', {ids[3]}), "
         f"({t % 4}, '{s}', 14, 1, 'X', {ids[4]})", None, "literal"),
        (insert_sql(1), (datetime(2026, 11, 6, 2, tzinfo=timezone.utc), s, Decimal(15), 1, "X", ids[5]), "params"),
        (f"SELECT count(*) FROM ticks WHERE symbol = '{s}'", None, "literal"),
        ("COMMIT", None, "literal"),
        ("BEGIN", None, "literal"),
        (f"INSERT INTO ticks {COLUMNS} VALUES ({t % 6}, '{s}', 16, 1, 'X', {ids[6]})", None, "literal"),
        (f"SELECT count(*) FROM ticks WHERE trade_id = {ids[6]} AND symbol = '{s}'", None, "literal"),
        ("ROLLBACK", None, "literal"),
        (f"SELECT count(*) FROM ticks WHERE trade_id = {ids[6]} AND symbol = '{s}'", None, "literal"),
        # In a transaction the rules do not apply (nothing is batched); PostgreSQL's checks do.
        ("BEGIN", None, "literal"),
        (insert_sql(1), (future, s, Decimal(17), 1, "X", ids[7]), "params"),
        ("COMMIT", None, "literal"),
        ("BEGIN", None, "literal"),
        (f"INSERT INTO ticks {COLUMNS} VALUES ({t % 8}, '{s}', 0, 1, 'X', {ids[8]})", None, "literal"),
        ("ROLLBACK", None, "literal"),
        # The client's own ON CONFLICT.
        (insert_sql(1, " ON CONFLICT DO NOTHING"), row0, "params"),
        (f"INSERT INTO ticks {COLUMNS} VALUES ({t % 1}, '{s}', 99, 1, 'X', {ids[1]}) "
         f"ON CONFLICT (symbol, ts, trade_id) DO UPDATE SET size = EXCLUDED.size + 1000 RETURNING size", None, "literal"),
        (f"INSERT INTO ticks {COLUMNS} VALUES ({t % 2}, '{s}', 99, 1, 'X', {ids[2]}) "
         f"ON CONFLICT (symbol, ts, trade_id) DO UPDATE SET price = 98", None, "literal"),
        # A relation without batch config (quotes), and its CHECK.
        ("INSERT INTO quotes (ts, symbol, bid, ask, bid_size, ask_size) VALUES (%s, %s, %s, %s, %s, %s)",
         (datetime(2026, 11, 6, 3, tzinfo=timezone.utc), s, Decimal("1.1"), Decimal("1.2"), 5, 6), "params"),
        (f"INSERT INTO quotes (ts, symbol, bid, ask, bid_size, ask_size) VALUES ({t % 9}, '{s}', 2, 1, 1, 1)",
         None, "literal"),
        # INSERT ... SELECT and a WITH clause.
        (f"INSERT INTO ticks {COLUMNS} SELECT timestamptz '2026-11-06 04:00+00' + g * interval '1 s', '{s}', g, g, 'S', "
         f"{ids[9]} + g FROM generate_series(1, 5) g", None, "literal"),
        (f"WITH v (ts, price) AS (VALUES (timestamptz '2026-11-06 05:00+00', 21), (timestamptz '2026-11-06 05:00:01+00', 22)) "
         f"INSERT INTO ticks {COLUMNS} SELECT ts, '{s}', price, 1, 'W', {ids[20]} + price FROM v", None, "literal"),
        # Two statements in one Query: one implicit transaction, the second fails, nothing stays.
        (f"INSERT INTO ticks {COLUMNS} VALUES ({t % 10}, '{s}', 30, 1, 'X', {ids[10]}); "
         f"INSERT INTO ticks {COLUMNS} VALUES ({t % 11}, '{s}', 31, -1, 'X', {ids[11]})", None, "literal"),
        (f"SELECT count(*) FROM ticks WHERE symbol = '{s}' AND trade_id IN ({ids[10]}, {ids[11]})", None, "literal"),
        # A stable function (now()) is not batchable.
        (f"INSERT INTO ticks {COLUMNS} VALUES (now() - interval '2 days', '{s}', 40, 1, 'N', {ids[12]})", None, "literal"),
    ]


def run_outcomes(conn: psycopg.Connection, steps: list[tuple[str, Any, str]], symbol: str) -> list[dict]:
    out = []
    literal = psycopg.ClientCursor(conn)
    cur = conn.cursor()

    def norm(v: Any) -> Any:
        return v.replace(symbol, "<SYMBOL>") if isinstance(v, str) else v

    for sql, params, kind in steps:
        c = literal if kind == "literal" else cur
        rec: dict[str, Any] = {"step": norm(sql)[:120]}
        try:
            c.execute(sql, params)
            rec.update(status=c.statusmessage, rowcount=c.rowcount,
                       rows=repr(c.fetchall()) if c.description else None)
        except psycopg.Error as e:
            rec["error"] = {k: norm(v) for k, v in error_fields(e).items()}
        rec["txstatus"] = conn.info.transaction_status.name
        out.append(rec)
    return out


def table_state(db: str, symbol: str) -> dict[str, list]:
    with direct(db) as c:
        ticks = c.execute("SELECT CASE WHEN exchange = 'N' THEN NULL ELSE ts END, price, size, exchange, trade_id, "
                          "conditions FROM ticks WHERE symbol = %s ORDER BY trade_id", (symbol,)).fetchall()
        quotes = c.execute("SELECT ts, bid, ask, bid_size, ask_size FROM quotes WHERE symbol = %s ORDER BY ts",
                           (symbol,)).fetchall()
    return {"ticks": ticks, "quotes": quotes}


def test_everything_else_passes_through(err: h.Proxy, batch_db: str):
    """INSERT ... RETURNING, inserts in explicit transactions (committed, rolled back, a row the
    rules would reject but PostgreSQL accepts, one PostgreSQL rejects), the client's own ON
    CONFLICT, a relation without batch config, INSERT ... SELECT, WITH, two inserts in one Query
    and a stable function: the same tags, rows, errors and stored rows as directly, and SHOW
    BATCHES counts none of them."""
    ids = [next_id() * 100 for _ in range(21)]  # room for the + g / + price offsets
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(microsecond=0)
    direct_symbol, proxy_symbol = new_symbol("PTD"), new_symbol("PTP")
    before = batch_stats(err, batch_db)
    with direct(batch_db) as c:
        expected = run_outcomes(c, pass_through_steps(direct_symbol, ids, future), direct_symbol)
    with connect(err, batch_db) as c:
        got = run_outcomes(c, pass_through_steps(proxy_symbol, ids, future), proxy_symbol)
    after = batch_stats(err, batch_db)
    h.assert_same(expected, got, "pass-through statements")
    assert table_state(batch_db, direct_symbol) == table_state(batch_db, proxy_symbol)
    assert delta(before, after, "rows") == 0 and delta(before, after, "rejects") == 0, \
        f"statements that must pass through were batched or checked: {before} -> {after}"


# --------------------------------------------------------------------------------------------
# 6. Parameters: functions, casts, binary


def value_steps(symbol: str, ids: list[int]) -> list[tuple[str, Any, dict]]:
    """(sql, params, execute options); every statement inserts one row but the last (two). Options
    `batched: True` mark the forms that must be batched (SHOW BATCHES rows grow by the rows sent):
    parameters and literals of the columns' types and immutable functions of them."""
    to_ts = f"INSERT INTO ticks {COLUMNS} VALUES (to_timestamp(%s), %s, %s, %s, %s, %s)"
    seven = "INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id, conditions) VALUES (%s, %s, %s, %s, %s, %s, %s)"
    return [
        (to_ts, (1762400000.123456, symbol, Decimal("123.4500"), 7, "NYSE", ids[0]), {"batched": True}),
        (to_ts, (1762400001.5, symbol, Decimal("1"), 8, "NYSE", ids[1]), {"prepare": True, "batched": True}),
        (to_ts, (1762400002, symbol, Decimal("2.25"), 9, "ARCA", ids[2]), {"prepare": True, "batched": True}),
        (to_ts, (1762400003.000001, symbol, Decimal("3"), 10, "ARCA", ids[3]), {"binary": True, "batched": True}),
        (seven, (datetime(2026, 11, 6, 12, 0, 0, 654321, tzinfo=timezone.utc), symbol,
                 Decimal("12345678901234567890.123456789"), 2 ** 62, "O'Brien \\ é \"q\" 🚀", ids[4],
                 ["@", "F T", 'é"x', "NULL"]), {"binary": True}),
        (seven, (datetime(2026, 11, 6, 12, 0, 1, tzinfo=timezone(timedelta(hours=-5))), symbol, 0.1, 3, "X", ids[5],
                 []), {"binary": True, "prepare": True}),
        (seven, (datetime(2026, 11, 6, 12, 0, 2, 1, tzinfo=timezone.utc), symbol, Decimal("7E-8"), 32767, "", ids[6],
                 ["a"]), {"binary": True, "prepare": True}),
        (f"INSERT INTO ticks {COLUMNS} VALUES (%s::timestamptz, %s, %s::numeric(12,2), %s::bigint, upper(%s), %s)",
         ("2026-11-06 12:00:03.5+02", symbol, "9.999", "42", "nasdaq", ids[7]), {}),
        (f"INSERT INTO ticks VALUES ('2026-11-06 13:00:00+00', '{symbol}', 1.5, 2, E'tab\\there ''q''', {ids[8]}, "
         "'{a,\"b c\"}')", None, {"literal": True}),
        (f"INSERT INTO ticks {COLUMNS} VALUES (to_timestamp(1762400009), '{symbol}', 2.5e1, abs(-3), lower('Z'), {ids[9]}), "
         f"(to_timestamp(1762400010.25), '{symbol}', 3, abs(-4), lower('Y'), {ids[10]})", None,
         {"literal": True, "batched": True}),
    ]


def run_value_steps(conn: psycopg.Connection, steps: list[tuple[str, Any, dict]]) -> list[tuple]:
    tags = []
    for sql, params, opts in steps:
        opts = dict(opts)
        opts.pop("batched", None)
        if opts.pop("literal", False):
            cur = psycopg.ClientCursor(conn)
            cur.execute(sql, params)
        else:
            cur = conn.cursor(binary=opts.pop("binary", False))
            cur.execute(sql, params, **opts)
        tags.append((cur.statusmessage, cur.rowcount))
    return tags


def stored_values(db: str, symbol: str) -> list[tuple]:
    with direct(db) as c:
        return c.execute("SELECT ts, price, size, exchange, trade_id, conditions FROM ticks WHERE symbol = %s "
                         "ORDER BY trade_id", (symbol,)).fetchall()


def test_parameters_functions_casts_and_binary_store_the_same_values(err: h.Proxy, batch_db: str):
    """to_timestamp($1), casts and immutable functions of parameters, binary parameters (int2 / int8 /
    numeric / timestamptz / text[] in binary), named prepared statements, text with quotes, backslashes
    and emoji, literals with E'' strings and arrays: the same tags as directly and the same stored
    values (read directly) as the same statements run on the primary."""
    ids = [next_id() for _ in range(11)]
    direct_symbol, proxy_symbol = new_symbol("VALD"), new_symbol("VALP")
    with direct(batch_db) as c:
        expected_tags = run_value_steps(c, value_steps(direct_symbol, ids))
    got_tags, unbatched = [], []
    with connect(err, batch_db) as c:
        for step in value_steps(proxy_symbol, ids):
            before = batch_stats(err, batch_db)
            got_tags += run_value_steps(c, [step])
            after = batch_stats(err, batch_db)
            if step[2].get("batched") and delta(before, after, "rows") != got_tags[-1][1]:
                unbatched.append((step[0][:90], step[2], after.get("not_batched")))
    assert got_tags == expected_tags
    expected, got = stored_values(batch_db, direct_symbol), stored_values(batch_db, proxy_symbol)
    assert len(expected) == 11
    for e, g in zip(expected, got):
        assert g == e, f"through Tidegate {g}\n directly {e}"
    assert got == expected
    assert got[0][0] == datetime(2025, 11, 6, 3, 33, 20, 123456, tzinfo=timezone.utc)
    assert not unbatched, f"batchable forms were not batched (statement, options, SHOW BATCHES not_batched): {unbatched}"


def test_rows_with_the_array_column_are_coalesced(err: h.Proxy, batch_db: str):
    """Inserts that set `conditions` (text[]) as a parameter (text and binary format) or a literal,
    from 8 clients × 25 statements: the tags are right, the arrays are stored as sent, and they are
    coalesced (fewer batches than statements), like inserts without the column."""
    symbol = new_symbol("ARR")
    sql = f"INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id, conditions) VALUES (%s, %s, %s, %s, %s, %s, %s)"
    sent: dict[int, list[str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(8, timeout=30)
    before = batch_stats(err, batch_db)

    def client(i: int) -> None:
        with connect(err, batch_db) as c:
            literal = psycopg.ClientCursor(c)
            start.wait()
            for k in range(25):
                row = make_row(symbol)
                conditions = [f"c{k}", "F T", 'q"x'][: 1 + k % 3]
                if k % 3 == 0:
                    cur = literal
                    cur.execute(sql, literal_params([row]) + [conditions])
                else:
                    cur = c.cursor(binary=k % 3 == 2)
                    cur.execute(sql, list(row) + [conditions], prepare=k % 2 == 0)
                assert cur.statusmessage == "INSERT 0 1", cur.statusmessage
                with lock:
                    sent[row[5]] = conditions

    errors = h.run_threads(8, client, timeout=300)
    after = batch_stats(err, batch_db)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    with direct(batch_db) as d:
        stored = dict(d.execute("SELECT trade_id, conditions FROM ticks WHERE symbol = %s", (symbol,)).fetchall())
    assert stored == sent
    batches = delta(before, after, "batches")
    assert batches < 200, (f"{batches:.0f} batches for 200 statements setting conditions (text[]): not coalesced; "
                           f"SHOW BATCHES not_batched {after.get('not_batched')!r}")


def test_multi_row_values_of_different_shapes_run_as_sent(err: h.Proxy, batch_db: str):
    """A multi-row VALUES whose rows have different shapes (`(..., 4, ...), (..., abs(-4), ...)`) cannot
    share one batch statement: it runs as sent, stores what PostgreSQL stores, and SHOW BATCHES says why
    (not_batched: "rows of different shapes")."""
    symbol = new_symbol("SHAPE")
    ids = [next_id(), next_id()]

    def sql(sym: str) -> str:
        return (f"INSERT INTO ticks {COLUMNS} VALUES ('2026-11-06 13:00:00+00', '{sym}', 3, 4, 'Z', {ids[0]}), "
                f"(to_timestamp(1762400010.25), '{sym}', 3, abs(-4), lower('Z'), {ids[1]})")

    reference = new_symbol("SHAPED")
    with direct(batch_db) as d:
        assert d.execute(sql(reference)).statusmessage == "INSERT 0 2"
    before = batch_stats(err, batch_db)
    with connect(err, batch_db) as c:
        assert c.execute(sql(symbol)).statusmessage == "INSERT 0 2"
    after = batch_stats(err, batch_db)
    assert stored_values(batch_db, symbol) == stored_values(batch_db, reference)
    assert delta(before, after, "rows") == 0, f"{before} -> {after}"
    assert "rows of different shapes" in str(after.get("not_batched")), after


@pytest.mark.parametrize("rules", ["module rules", "no ts rule"])
def test_session_settings_apply_to_batched_literals(request, tidegate_instance, batch_db: str, rules: str):
    """Zone-less and DateStyle-dependent timestamp text means what the client's session says:
    TimeZone America/New_York and DateStyle 'ISO, DMY' set on the session are applied to its rows
    (simple and extended protocol) while other sessions insert with the defaults. With the module's
    rules (ts_not_future reads ts) and on an instance whose only rule is price_positive: PostgreSQL
    accepts these rows directly, so must Tidegate."""
    if rules == "module rules":
        err = request.getfixturevalue("err")
    else:
        err = tidegate_instance(batch_overrides("error", rules={"price_positive": {"column": "price", "greater_than": 0}}),
                                name="batch-no-ts-rule")
        require_batching(err, batch_db)
    ids = [next_id() for _ in range(4)]
    direct_symbol, proxy_symbol = new_symbol("SETD"), new_symbol("SETP")

    def run(conn: psycopg.Connection, symbol: str) -> None:
        conn.execute("SET TimeZone = 'America/New_York'")
        conn.execute("SET DateStyle = 'ISO, DMY'")
        literal = psycopg.ClientCursor(conn)
        literal.execute(insert_sql(1), ("2026-11-06 09:30:00", symbol, 1, 1, "X", ids[0]))
        conn.execute(insert_sql(1), ("2026-11-06 09:30:01", symbol, 1, 1, "X", ids[1]))
        literal.execute(insert_sql(1), ("05/11/2026 10:00", symbol, 1, 1, "X", ids[2]))
        conn.execute(insert_sql(1), ("05/11/2026 10:00:01", symbol, 1, 1, "X", ids[3]), prepare=True)

    with direct(batch_db) as c:
        run(c, direct_symbol)
    stop = threading.Event()
    noise_errors: list[str] = []

    def noise() -> None:  # default-settings sessions inserting meanwhile, into the same batches
        try:
            with connect(err, batch_db) as c:
                while not stop.is_set():
                    c.execute(insert_sql(1), make_row(new_symbol("NOISE")))
        except psycopg.Error as e:
            noise_errors.append(f"{e.sqlstate}: {e}")

    threads = [threading.Thread(target=noise, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with connect(err, batch_db) as c:
            run(c, proxy_symbol)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not noise_errors, noise_errors[:3]
    expected, got = stored_values(batch_db, direct_symbol), stored_values(batch_db, proxy_symbol)
    assert expected[0][0] == datetime(2026, 11, 6, 14, 30, tzinfo=timezone.utc)
    assert expected[2][0] == datetime(2026, 11, 5, 15, 0, tzinfo=timezone.utc)
    assert got == expected


# --------------------------------------------------------------------------------------------
# SHOW BATCHES and /metrics


def test_show_batches_and_metrics(err: h.Proxy, batch_db: str):
    """SHOW BATCHES has a row for (database, ticks) with the documented columns; /metrics has the five
    batch counters labelled relation="ticks", rows and batches at least what SHOW BATCHES counts."""
    symbol = new_symbol("MET")

    def client(i: int) -> None:
        with connect(err, batch_db) as c:
            for _ in range(20):
                assert c.execute(insert_sql(1), make_row(symbol)).statusmessage == "INSERT 0 1"

    errors = h.run_threads(8, client, timeout=120)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:5]]
    _, names, rows = h.admin_query(err, "SHOW BATCHES")
    assert all(c in names for c in SHOW_BATCHES_COLUMNS), names
    mine = [dict(zip(names, r)) for r in rows if str(r[names.index("database")]) == batch_db
            and str(r[names.index("relation")]) == "ticks"]
    assert len(mine) == 1, rows
    stats = batch_stats(err, batch_db)
    assert stats["rows"] >= 160 and stats["batches"] >= 1 and stats["queued_rows"] == 0, stats
    # avg_rows is the mean size of the recent batches (not rows / batches since the start)
    assert 1 <= stats["avg_rows"] <= stats["rows"], stats

    def samples() -> dict[str, float]:
        status, _, body = h.http_get(err.http[0], err.http[1], "/metrics")
        assert status == 200
        text = body.decode()
        return {name: sum(v for labels, v in h.metric_samples(text, name) if labels.get("relation") == "ticks")
                for name in BATCH_METRICS if any(labels.get("relation") == "ticks"
                                                  for labels, _ in h.metric_samples(text, name))}

    assert h.wait_for(lambda: len(samples()) == len(BATCH_METRICS)
                      and samples()["tidegate_batch_rows_total"] >= stats["rows"], 5, 0.2), \
        f"/metrics batch counters (relation=\"ticks\"): {samples()}; SHOW BATCHES: {stats}"
    got = samples()
    assert got["tidegate_batch_batches_total"] >= stats["batches"], (got, stats)


# --------------------------------------------------------------------------------------------
# 7. Crash: every acknowledged row is stored


def test_kill_9_loses_no_acknowledged_row(tidegate_instance, batch_db: str):
    """32 clients insert single rows (unique trade_ids) through a Tidegate that is killed with
    SIGKILL after about 3 s; every trade_id a client saw acknowledged is in the table (read on the
    primary). Statements in flight at the kill may or may not be stored."""
    p = tidegate_instance(batch_overrides("error"), name="batch-crash")
    require_batching(p, batch_db)
    symbol = new_symbol("CRASH")
    clients = 32
    acked: list[list[int]] = [[] for _ in range(clients)]
    in_flight: list[int] = []
    odd: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(clients + 1, timeout=60)

    def client(i: int) -> None:
        conn = connect(p, batch_db)
        try:
            started.wait()
            n = 0
            while True:
                n += 1
                row = make_row(symbol)
                try:
                    cur = conn.execute(insert_sql(1), row, prepare=i % 2 == 0)
                except psycopg.Error as e:
                    with lock:
                        in_flight.append(row[5])
                        if not isinstance(e, psycopg.OperationalError) and not is_connection_error(e.sqlstate):
                            odd.append(f"client {i}: {type(e).__name__} {e.sqlstate}: {e}")
                    return
                if cur.statusmessage != "INSERT 0 1":
                    with lock:
                        odd.append(f"client {i}: tag {cur.statusmessage!r}")
                acked[i].append(row[5])
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    started.wait()
    t0 = time.monotonic()
    assert h.wait_for(lambda: sum(map(len, acked)) >= 200, 30, 0.1), \
        f"only {sum(map(len, acked))} inserts acknowledged in 30 s"
    while time.monotonic() - t0 < 3:
        time.sleep(0.05)
    stats = batch_stats(p, batch_db)
    p.process.send_signal(signal.SIGKILL)
    p.process.wait(10)
    for t in threads:
        t.join(60)
    hung = sum(t.is_alive() for t in threads)
    assert not hung, f"{hung} clients still blocked 60 s after the kill"
    acknowledged = {tid for per in acked for tid in per}
    stored = set(trade_ids(batch_db, symbol))
    lost = acknowledged - stored
    extra = stored - acknowledged
    print(f"kill -9 after {time.monotonic() - t0:.1f} s: {len(acknowledged)} acknowledged, {len(stored)} stored, "
          f"{len(in_flight)} in flight at the kill ({len(extra)} of them stored), lost {len(lost)}; "
          f"SHOW BATCHES just before: {stats}")
    assert not odd, odd[:5]
    assert stats["batches"] > 0 and stats["batches"] < stats["rows"], f"the load was not batched: {stats}"
    assert not lost, f"{len(lost)} acknowledged rows are not stored: {sorted(lost)[:10]}"
    assert extra <= set(in_flight), f"rows stored that no client sent: {sorted(extra - set(in_flight))[:10]}"


# --------------------------------------------------------------------------------------------
# 8. The cache and read-your-writes


def cache_stats(proxy: h.Proxy) -> dict:
    _, names, rows = h.admin_query(proxy, "SHOW CACHE")
    return dict(zip(names, rows[0]))


def test_cached_read_sees_batched_insert_at_once(tidegate_instance, batch_db: str):
    """With the result cache on: a read of a symbol/minute is cached (a hit), a batched insert into that
    minute is acknowledged, and the next read — of the same session and of another — has the new row."""
    if not h.redis_up():
        pytest.skip(f"lab Redis {h.HOST}:{h.REDIS_PORT} not reachable (run scripts/lab up)")
    overrides = batch_overrides("error")
    overrides.update({"cache.enabled": True, "cache.redis.host": h.HOST, "cache.redis.port": h.REDIS_PORT,
                      "cache.key_prefix": h.unique_name("tgb") + ":", "cache.listener.enabled": False})
    p = tidegate_instance(overrides, name="batch-cache")
    require_batching(p, batch_db)
    symbol = new_symbol("CACHE")
    minute0 = datetime(2026, 11, 7, 10, tzinfo=timezone.utc)
    with direct(batch_db) as d:
        with d.cursor().copy(f"COPY ticks {COLUMNS} FROM STDIN") as copy:
            for m in range(10):
                for s in range(0, 60, 7):
                    copy.write_row((minute0 + timedelta(minutes=m, seconds=s), symbol, 10, 1, "X", next_id()))
    read = "SELECT count(*), sum(size) FROM ticks WHERE symbol = %s AND ts >= %s AND ts < %s"
    before = batch_stats(p, batch_db)
    inserts = 0
    with connect(p, batch_db) as a, connect(p, batch_db) as b:
        deadline = time.monotonic() + 10  # the function catalog loads on first use; until then no caching
        while True:
            a.execute(read, (symbol, minute0, minute0 + timedelta(minutes=1))).fetchone()
            hits = int(cache_stats(p)["hits"])
            a.execute(read, (symbol, minute0, minute0 + timedelta(minutes=1))).fetchone()
            if int(cache_stats(p)["hits"]) > hits:
                break
            assert time.monotonic() < deadline, f"reads are never cache hits: {cache_stats(p)}"
            time.sleep(0.1)
        for m in range(10):
            lo, hi = minute0 + timedelta(minutes=m), minute0 + timedelta(minutes=m + 1)
            for writer, other in ((a, b), (b, a)):
                count, volume = writer.execute(read, (symbol, lo, hi)).fetchone()
                hits = int(cache_stats(p)["hits"])
                assert writer.execute(read, (symbol, lo, hi)).fetchone() == (count, volume)
                assert other.execute(read, (symbol, lo, hi)).fetchone() == (count, volume)
                # (a session that just wrote may read past the cache; the other one hits)
                assert int(cache_stats(p)["hits"]) >= hits + 1, f"minute {m}: the reads were not cached"
                row = make_row(symbol, ts=lo + timedelta(seconds=30, microseconds=next_id() % 1000), size=5)
                assert writer.execute(insert_sql(1), row).statusmessage == "INSERT 0 1"
                inserts += 1
                assert writer.execute(read, (symbol, lo, hi)).fetchone() == (count + 1, volume + 5), \
                    f"minute {m}: the writing session reads a stale result after its batched insert"
                assert other.execute(read, (symbol, lo, hi)).fetchone() == (count + 1, volume + 5), \
                    f"minute {m}: another session reads a stale result after a batched insert was acknowledged"
    after = batch_stats(p, batch_db)
    assert delta(before, after, "rows") == inserts, f"the inserts were not batched: {before} -> {after}"


def replicas_replayed(db: str, timeout: float = 30) -> bool:
    """Both lab replicas are streaming and have replayed the primary's current LSN."""
    try:
        with psycopg.connect(h.direct_dsn(db="postgres"), autocommit=True) as c:
            lsn = c.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    except psycopg.Error:
        return False

    def replayed(port: int) -> bool:
        try:
            with psycopg.connect(h.make_dsn(h.HOST, port, db, connect_timeout=2), autocommit=True) as c:
                return bool(c.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0])
        except psycopg.Error:
            return False

    return h.wait_for(lambda: replayed(h.US_EAST_PORT) and replayed(h.EU_WEST_PORT), timeout, 0.2)


def test_read_your_writes_after_batched_insert(tidegate_instance, batch_db: str):
    """With the lab's regions (reads on the us-east replica, read_your_writes: session): a session that
    has not written reads on a replica; right after a batched insert is acknowledged, the session's
    next read has the row (wherever it is served), 300 times in a row."""
    if not replicas_replayed(batch_db):
        pytest.skip("the lab replicas 15433/15434 are not streaming the scratch database (scripts/lab up)")
    overrides = h.regions_overrides()
    overrides.update(batch_overrides("error"))
    p = tidegate_instance(overrides, name="batch-ryw")
    h.wait_nodes(p, {"primary": ("primary", "up"), "us-east-1": ("replica", "up"),
                     "eu-west-1": ("replica", "up")}, timeout=20)
    require_batching(p, batch_db)

    def fresh_read_port() -> int:
        with connect(p, batch_db) as c:
            return int(c.execute("SELECT count(*), inet_server_port() FROM ticks WHERE symbol = 'NONE'").fetchone()[1])

    # The control: a session that has not written reads on a replica (else the test proves nothing).
    assert h.wait_for(lambda: fresh_read_port() != h.PRIMARY_PORT, 15, 0.2), \
        "reads of a session without writes never leave the primary"
    symbol = new_symbol("RYW")
    read = "SELECT count(*), inet_server_port() FROM ticks WHERE symbol = %s AND trade_id = %s"
    ports: Counter = Counter()
    misses = []
    before = batch_stats(p, batch_db)
    with connect(p, batch_db) as c:
        for i in range(300):
            row = make_row(symbol)
            assert c.execute(insert_sql(1), row, prepare=i % 2 == 1).statusmessage == "INSERT 0 1"
            count, port = c.execute(read, (symbol, row[5]), prepare=i % 2 == 1).fetchone()
            ports[port] += 1
            if count != 1:
                misses.append((i, row[5], port))
    after = batch_stats(p, batch_db)
    shown = ", ".join(f"{port}×{n}" for port, n in ports.most_common())
    print(f"read-your-writes after batched inserts: reads served by {shown}")
    assert not misses, f"{len(misses)} of 300 reads missed the session's acknowledged row (i, trade_id, " \
                       f"port): {misses[:10]}; reads served by {shown}"
    assert delta(before, after, "rows") == 300, f"the inserts were not batched: {before} -> {after}"


# --------------------------------------------------------------------------------------------
# 9. The primary unreachable


class Relay:
    """A TCP relay to the lab primary that can be cut (listener closed, every connection reset) and
    restored on the same port: the primary's port becomes a closed port and comes back."""

    def __init__(self, target_port: int):
        self.target = target_port
        probe = socket.socket()
        probe.bind((h.HOST, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.running = False
        self.start()

    def start(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((h.HOST, self.port))
        s.listen(64)
        s.settimeout(0.1)
        self.listener, self.running = s, True
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while self.running:
            try:
                client, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((h.HOST, self.target), timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.running = False
        if self.listener is not None:
            self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()  # linger 0: RST
            except OSError:
                pass
        assert h.wait_for(lambda: not h.port_accepts(h.HOST, self.port, 0.2), 5), "the relay port still accepts"

    def close(self) -> None:
        self.cut()


def raw_insert_outcome(proxy: h.Proxy, db: str, sql: str) -> tuple[str, dict[str, str]]:
    """Log in with the raw protocol client (psycopg shows no SQLSTATE for a failed login) and run
    `sql` as a simple Query: ('login' | 'query' | 'none', the first ErrorResponse's fields)."""
    with h.RawConn(proxy.host, proxy.port, timeout=15) as raw:
        login = raw.startup("tidegate", db, password="tidegate")
        if login.end != "ready":
            return "login", (login.errors[0] if login.errors else {"end": login.end})
        out = raw.simple_query(sql)
        return ("query", out.errors[0]) if out.errors else ("none", {"messages": out.types})


def test_primary_never_reachable(tidegate_instance, batch_db: str):
    """The primary is a closed port from the start (failover_wait_ms 1000): a client trying to insert
    gets a clear error (08xxx or 57P03) — at login, which needs a server connection, or at the insert —
    and the proxy stays up: the admin console answers SHOW BATCHES, and the next client gets the same
    clear error rather than a hang."""
    closed = Relay(h.PRIMARY_PORT)
    closed.cut()
    overrides = batch_overrides("error")
    overrides.update({"primary": {"host": h.HOST, "port": closed.port}, "routing.failover_wait_ms": 1000})
    p = tidegate_instance(overrides, name="batch-no-primary")
    row = make_row(new_symbol("NOPRI"))
    sql = (f"INSERT INTO ticks {COLUMNS} VALUES ('{row[0].isoformat()}', '{row[1]}', {row[2]}, {row[3]}, "
           f"'{row[4]}', {row[5]})")
    for attempt in range(2):
        t0 = time.monotonic()
        where, error = raw_insert_outcome(p, batch_db, sql)
        elapsed = time.monotonic() - t0
        print(f"attempt {attempt}: failed at {where} after {elapsed:.1f} s: {error}")
        assert where in ("login", "query"), f"the insert did not fail: {error}"
        assert is_connection_error(error.get("C")), f"not a clear connection error at {where}: {error}"
        assert error.get("M"), error
        assert elapsed < 12, f"the error took {elapsed:.1f} s"
        assert p.alive(), "Tidegate exited"
    batch_stats(p, batch_db)  # the admin console answers
    assert row[5] not in trade_ids(batch_db, row[1])


def test_primary_lost_batched_insert_fails_clearly(tidegate_instance, batch_db: str):
    """The primary is reached through a relay; two clients log in and insert (batched); the relay is
    cut (its port closed, connections reset). Their next batched inserts fail within failover_wait_ms
    (+ a margin) with 08xxx or 57P03 (an ErrorResponse, not just a dropped connection); the proxy stays
    up (the admin console answers, a third client gets a clear error too); once the relay is back an
    insert succeeds, and the inserts reported failed were not stored later."""
    relay = Relay(h.PRIMARY_PORT)
    try:
        overrides = batch_overrides("error")
        overrides.update({"primary": {"host": h.HOST, "port": relay.port}, "routing.failover_wait_ms": 1000,
                          "health.interval_ms": 200})
        p = tidegate_instance(overrides, name="batch-lost-primary")
        require_batching(p, batch_db)
        symbol = new_symbol("LOST")
        sessions = [connect(p, batch_db) for _ in range(2)]
        first = [make_row(symbol) for _ in sessions]
        failed_rows = [make_row(symbol) for _ in sessions]
        unknown: set[int] = set()  # 08007: the outcome is unknown, the row may be stored or not
        try:
            for c, row in zip(sessions, first):
                assert c.execute(insert_sql(1), row).statusmessage == "INSERT 0 1"
            relay.cut()
            for i, (c, row) in enumerate(zip(sessions, failed_rows)):
                t0 = time.monotonic()
                with pytest.raises(psycopg.Error) as failure:
                    c.execute(insert_sql(1), row, prepare=i == 1)
                e = failure.value
                elapsed = time.monotonic() - t0
                print(f"batched insert {i} without a primary: {type(e).__name__} {e.sqlstate} after {elapsed:.2f} s "
                      f"(session {'closed' if c.closed or c.broken else 'open'}): {str(e).strip()[:200]}")
                assert is_connection_error(e.sqlstate), \
                    f"insert {i}: not a clear connection error: {type(e).__name__} {e.sqlstate}: {e}"
                if e.sqlstate == "08007":
                    unknown.add(row[5])
                assert elapsed < 12, f"insert {i}: the error took {elapsed:.1f} s"
                assert p.alive(), "Tidegate exited"
            batch_stats(p, batch_db)  # the admin console answers
            # Another client: logs in (the login parameters are known) and its insert fails, or the
            # login fails; either way with a clear error, not a hang.
            other = make_row(symbol)
            sql = (f"INSERT INTO ticks {COLUMNS} VALUES ('{other[0].isoformat()}', '{other[1]}', {other[2]}, "
                   f"{other[3]}, '{other[4]}', {other[5]})")
            where, error = raw_insert_outcome(p, batch_db, sql)
            print(f"another client while the primary is unreachable: failed at {where}: {error}")
            assert where in ("login", "query") and is_connection_error(error.get("C")), (where, error)
        finally:
            for c in sessions:
                c.close()
        relay.start()
        last = make_row(symbol)
        deadline = time.monotonic() + 20
        while True:
            try:
                with connect(p, batch_db) as c:
                    assert c.execute(insert_sql(1), last).statusmessage == "INSERT 0 1"
                break
            except psycopg.Error as e3:
                assert time.monotonic() < deadline, \
                    f"inserts still fail 20 s after the primary is back: {type(e3).__name__} {e3.sqlstate}: {e3}"
                time.sleep(0.2)
        stored = set(trade_ids(batch_db, symbol))
        assert {r[5] for r in first} | {last[5]} <= stored, stored
        refused = ({r[5] for r in failed_rows} | {other[5]}) - unknown
        assert not stored & refused, "inserts reported failed were stored"
    finally:
        relay.close()
