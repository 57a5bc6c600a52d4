#!/usr/bin/env python3
"""Rows of ticks for the insert-coalescing benchmark (loadtest/bench-batch), and the cost of the
candidate forms of one batch statement measured directly on a PostgreSQL server.

  insert-forms.py rows --rows N [--day YYYY-MM-DD] [--seed S]
      N rows as COPY text (columns ts, symbol, price, size, exchange, trade_id) on stdout.

  insert-forms.py forms --dsn DSN [--batch-rows 5000] [--statements 5] [--rounds 4] [--forms LIST]
      For each round and each form: TRUNCATE ticks (and the bars trigger's tidegate_bars_dirty),
      then --statements statements of --batch-rows rows each, autocommit, one connection. The rows
      and statement texts are built before the clock starts; only the round trip of each statement
      is timed. One tab-separated line per form on stdout:
          form  statements  rows  seconds  rows_per_s  median_ms  min_ms  max_ms
      --raw FILE writes every statement's time (form, round, statement number, ms). Forms:
        copy           COPY ticks (…) FROM STDIN, text format
        unnest         INSERT INTO ticks (…) SELECT * FROM unnest($1::timestamptz[], $2::text[],
                       $3::numeric[], $4::int8[], $5::text[], $6::int8[]), six text array literals
        values-params  INSERT INTO ticks (…) VALUES ($1, …, $6), (…) … — 6 parameters per row, untyped
        values-literal the same with the values as quoted literals, simple query protocol
      The extended-protocol forms use the unnamed statement (Parse/Bind/Execute each time, as a
      batcher whose batch size varies would), text format parameters.

Python 3 and psycopg 3 (its libpq wrapper, so client-side overhead is small).
"""
import argparse
import datetime as dt
import random
import statistics
import sys
import time

COLUMNS = "ts, symbol, price, size, exchange, trade_id"
SYMBOLS = [f"S{k:02d}" for k in range(1, 51)]


def gen_rows(n, day, rng, first_id):
    """n tuples of text values: ts (UTC, µs), symbol, price, size, exchange, trade_id (unique)."""
    base = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    out = []
    for i in range(n):
        ts = base + dt.timedelta(microseconds=rng.randrange(86_400_000_000))
        out.append((ts.strftime("%Y-%m-%d %H:%M:%S.%f+00"), rng.choice(SYMBOLS),
                    f"{rng.randrange(1000, 50000) / 100:.2f}", str(rng.randrange(1, 1001)), "X",
                    str(first_id + i)))
    return out


def copy_text(rows):
    return "".join("\t".join(r) + "\n" for r in rows).encode()


def array_literal(values, quote):
    if quote:
        return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"
    return "{" + ",".join(values) + "}"


def sql_literal(v):
    return "'" + v.replace("'", "''") + "'"


UNNEST = (f"INSERT INTO ticks ({COLUMNS}) SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::numeric[], "
          "$4::int8[], $5::text[], $6::int8[])")


def prepare(form, rows):
    """What to send for one statement of `form`, built before timing."""
    if form == "copy":
        return copy_text(rows)
    if form == "unnest":
        cols = list(zip(*rows))
        quote = (True, True, False, False, True, False)
        return [array_literal(c, q).encode() for c, q in zip(cols, quote)]
    if form == "values-params":
        groups = ",".join("(" + ",".join(f"${6 * i + j + 1}" for j in range(6)) + ")" for i in range(len(rows)))
        return (f"INSERT INTO ticks ({COLUMNS}) VALUES {groups}".encode(),
                [v.encode() for r in rows for v in r])
    if form == "values-literal":
        groups = ",".join("(" + ",".join(sql_literal(v) for v in r) + ")" for r in rows)
        return f"INSERT INTO ticks ({COLUMNS}) VALUES {groups}".encode()
    raise SystemExit(f"unknown form {form}")


def run_one(conn, form, payload, nrows):
    from psycopg import pq
    pg = conn.pgconn
    if form == "copy":
        with conn.cursor() as cur:
            with cur.copy(f"COPY ticks ({COLUMNS}) FROM STDIN") as cp:
                cp.write(payload)
            n = cur.rowcount
    else:
        if form == "unnest":
            res = pg.exec_params(UNNEST.encode(), payload)
        elif form == "values-params":
            res = pg.exec_params(payload[0], payload[1])
        else:
            res = pg.exec_(payload)
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise RuntimeError(f"{form}: {res.error_message.decode(errors='replace').strip()}")
        n = int(res.command_tuples or 0)
    if n != nrows:
        raise RuntimeError(f"{form}: {n} rows inserted, expected {nrows}")


def cmd_rows(a):
    rng = random.Random(a.seed)
    day = dt.date.fromisoformat(a.day)
    out = sys.stdout.buffer
    done = 0
    while done < a.rows:
        n = min(100_000, a.rows - done)
        out.write(copy_text(gen_rows(n, day, rng, a.first_id + done)))
        done += n


def cmd_forms(a):
    import psycopg
    forms = a.forms.replace(",", " ").split()
    rng = random.Random(a.seed)
    day = dt.date.fromisoformat(a.day)
    conn = psycopg.connect(a.dsn, autocommit=True)
    conn.prepare_threshold = None
    times = {f: [] for f in forms}
    raw = open(a.raw, "w") if a.raw else None
    next_id = 1
    for rnd in range(1, a.rounds + 1):
        for form in forms:
            payloads = []
            for _ in range(a.statements):
                payloads.append(prepare(form, gen_rows(a.batch_rows, day, rng, next_id)))
                next_id += a.batch_rows
            conn.execute("TRUNCATE ticks, tidegate_bars_dirty")
            for i, p in enumerate(payloads, 1):
                t0 = time.perf_counter()
                run_one(conn, form, p, a.batch_rows)
                times[form].append(time.perf_counter() - t0)
                if raw:
                    raw.write(f"{form}\t{rnd}\t{i}\t{times[form][-1] * 1000:.2f}\n")
    conn.execute("TRUNCATE ticks, tidegate_bars_dirty")
    conn.close()
    for form in forms:
        ts = times[form]
        total = sum(ts)
        rows = len(ts) * a.batch_rows
        print("\t".join([form, str(len(ts)), str(rows), f"{total:.3f}", f"{rows / total:.0f}",
                         f"{statistics.median(ts) * 1000:.1f}", f"{min(ts) * 1000:.1f}", f"{max(ts) * 1000:.1f}"]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rows")
    r.add_argument("--rows", type=int, required=True)
    f = sub.add_parser("forms")
    f.add_argument("--dsn", required=True)
    f.add_argument("--batch-rows", type=int, default=5000)
    f.add_argument("--statements", type=int, default=5)
    f.add_argument("--rounds", type=int, default=4)
    f.add_argument("--forms", default="copy unnest values-params values-literal")
    f.add_argument("--raw", help="write every statement's time (form, round, statement, ms) to this file")
    for x in (r, f):
        x.add_argument("--day", default="2026-11-16")
        x.add_argument("--seed", type=int, default=1)
        x.add_argument("--first-id", type=int, default=1)
    a = p.parse_args()
    try:
        cmd_rows(a) if a.cmd == "rows" else cmd_forms(a)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:  # one line, for the report
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
