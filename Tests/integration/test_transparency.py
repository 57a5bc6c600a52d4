"""Transparency suite (ARCHITECTURE.md contract 1).

Each test runs the same statements directly on the lab primary and through the proxy and compares
what the client sees: rows (loaded values and raw text/binary bytes), column descriptions (name,
table oid, column number, type oid, type size, typmod, format), command tags, row counts,
ParameterStatus values, notices, and for errors every ErrorResponse field psycopg exposes.

Most cases run in every protocol mode of tgharness.MODES: simple query, extended (pipeline), binary
results, named prepared statements (text and binary), and inside explicit transactions.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

import tgharness as h
from tgharness import compare

PREPARED_LIMITATION = ("transaction pooling without prepared-statement tracking (PgBouncer 1.18): "
                       "a named statement is missing, or 42P05, on another server connection")


UNTRACKED_GUC = (
    "PgBouncer 1.18 restores only client_encoding, DateStyle, TimeZone, "
    "standard_conforming_strings and application_name when it moves a client to another server "
    "connection; {} set by an earlier statement is lost")


def modes(names=None, session_guc=None):
    """pytest params for the protocol modes. session_guc: the test depends on a session setting
    PgBouncer does not carry across server connections; its statements outside a transaction are
    expected to fail on PgBouncer."""
    names = names or list(h.MODES)
    out = []
    for m in names:
        mode = h.MODES[m]
        marks = []
        if mode.prepare:
            marks.append(pytest.mark.pgbouncer_xfail(PREPARED_LIMITATION))
        elif session_guc and mode.autocommit:
            marks.append(pytest.mark.pgbouncer_xfail(UNTRACKED_GUC.format(session_guc)))
        out.append(pytest.param(m, id=m, marks=marks))
    return out


ALL_MODES = modes()
FAST_MODES = modes(["simple", "extended", "binary", "prepared_binary", "txn"])
SIMPLE_MODES = modes(["simple", "txn"])  # multi-statement strings need the simple protocol


# --------------------------------------------------------------------------------------------
# Plain values

BASIC = [
    "select 1",
    "select 1 as a, 'two'::text as b, 3.5::float8 as c, true as d, null::int as e",
    "select * from (values (1, 'a'), (2, 'b'), (3, null)) v(id, name) order by id",
    "select oid, relname, relkind, relnatts from pg_class "
    "where relname in ('pg_class', 'pg_type', 'pg_proc') order by relname",
    "select datname, datallowconn from pg_database where datname = current_database()",
    ("select %s::int + %s::int as sum, %s::text as t, %s::bool as b", (1, 2, "x", False)),
    "select",
    "values (1), (2), (3)",
    "select 1 from generate_series(1, 0)",
    "select current_user, session_user, current_database(), current_schema()",
    "select typname, typlen, typbyval from pg_type where oid in (16, 20, 25, 1700) order by oid",
    "select 'x'::char(3) as c3, 'y'::varchar(10) as v10, 'z'::name as n, 42::oid as o, "
    "'pg_class'::regclass as rc, B'1010'::bit(4) as bits, 12.34::numeric(6,2) as n62",
    "select '{\"a\": [1, 2.5, null]}'::jsonb as jb, '{\"b\" :1}'::json as j, "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u, '192.168.0.1/24'::inet as i, "
    "'08:00:2b:01:02:03'::macaddr as m, '[1,10)'::int4range as r, '(1,2)'::point as p, "
    "'foo bar'::tsvector as tsv, 12.34::money as cash, row(1, 'a') as rec",
    "show server_version",
    "show standard_conforming_strings",
]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_basic_selects(proxy, mode):
    compare(BASIC, mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_nulls(proxy, mode):
    compare([
        "select null, null::text, null::int, null::bytea, null::int[], null::timestamptz",
        "select array[null]::int[], array[null, 1]::int[], row(null, null), ''::text as empty",
        "select null = null as eq, null is null as isnull, coalesce(null, 'x') as c, "
        "nullif(1, 1) as ni",
        ("select %s::text is null, %s::int, %s::text", (None, None, "")),
        "select * from (values (1, null::text), (null, 'b')) v(a, b)",
    ], mode)


UNICODE = "😀 👩‍👩‍👧‍👦 日本語テキスト 中文 한국어 e\u0301 n\u0303 a\u030a Ω≈ç√∫ \u200b zero-width"


@pytest.mark.parametrize("mode", ALL_MODES)
def test_unicode(proxy, mode):
    compare([
        f"select '{UNICODE}' as mixed",
        "select '😀' as emoji, '日本語' as cjk, 'e\u0301' as combining, "
        "length('e\u0301') as len, octet_length('😀') as octets",
        "select upper('straße'), lower('ΣΊΣΥΦΟΣ'), 'ǅ' as titlecase, chr(128512), chr(1114111)",
        'select 1 as "列名", 2 as "😀", 3 as "e\u0301"',
        ("select %s::text as echoed, length(%s::text) as len", (UNICODE, UNICODE)),
        "select string_agg(chr(c), '') from generate_series(12352, 12447) c",
    ], mode)


ALL_256 = ("select decode(string_agg(lpad(to_hex(i), 2, '0'), '' order by i), 'hex') as b "
           "from generate_series(0, 255) i")


@pytest.mark.parametrize("mode", ALL_MODES)
def test_bytea(proxy, mode):
    compare([
        ALL_256,
        "select '\\x00ff'::bytea, ''::bytea, null::bytea, 'abc\\000'::bytea",
        ("select %s::bytea as b, length(%s::bytea) as n", (bytes(range(256)), bytes(range(256)))),
        ("select %s::bytea", (bytes(range(255, -1, -1)),)),
    ], mode)


@pytest.mark.parametrize("mode", modes(session_guc="bytea_output"))
def test_bytea_output_setting(proxy, mode):
    compare([
        ALL_256,
        "SET bytea_output = 'escape'",
        ALL_256,
        "select '\\x00ff'::bytea, ''::bytea, 'a\\\\b'::bytea",
        ("select %s::bytea", (bytes(range(255, -1, -1)),)),
        "show bytea_output",
        "SET bytea_output = 'hex'",
        ALL_256,
        "RESET bytea_output",
    ], mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_arrays(proxy, mode):
    compare([
        "select array[1, 2, 3]::int[], array[]::int[], '{1,NULL,3}'::int[], array[1, 2]::int8[]",
        "select array['a', 'b\"c', null, 'd,e', '', 'NULL', 'x y', 'back\\slash', '{}', "
        "'quote''s']::text[] as t",
        "select array[[1, 2], [3, 4]]::int[] as two_d, '[0:1]={7,8}'::int[] as lbound, "
        "array[[['a']]]::text[] as three_d, '{{NULL,2},{3,NULL}}'::int[] as nulls_2d",
        "select array[1.5, 'NaN']::numeric[], array['2024-01-01'::date], "
        "array[true, false, null], array['\\x00ff'::bytea]",
        ("select %s::int[], %s::text[]", ([1, None, 3], ["a", 'b"c', None, "d,e"])),
        "select array_dims(array[[1, 2, 3], [4, 5, 6]]), cardinality(array[[1, 2], [3, 4]])",
    ], mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_numeric(proxy, mode):
    compare([
        "select 123456789012345678901234567890.123456789012345678901234567890::numeric as big",
        "select 'NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric, 0::numeric, "
        "-0.0::numeric, 1e-30::numeric, 10::numeric ^ 300 as huge",
        "select 12345.678::numeric(5, -2) as neg_scale, round(1234.5678, -2) as r, "
        "99999.9::numeric(7, -3) as neg3",
        "select 1.0 / 3.0, 2::numeric / 3, sqrt(2::numeric), exp(1::numeric)",
        "select 0.1::float8, 1e308::float8, 'NaN'::float8, '-Infinity'::float4, 1.0e-320::float8, "
        "3.4e38::float4, -0.0::float8",
        ("select %s::numeric, %s::numeric",
         (Decimal("3.14159265358979323846264338327950288419716939937510"), Decimal("-1E-20"))),
        ("select %s::float8, %s::int8", (0.1, -9223372036854775808)),
        "select 0.1::float8 + 0.2::float8, 1::float4 / 3",
    ], mode)


@pytest.mark.parametrize("mode", modes(session_guc="extra_float_digits"))
def test_extra_float_digits(proxy, mode):
    compare([
        "select 0.1::float8 + 0.2::float8, 1::float4 / 3",
        "SET extra_float_digits = 0",
        "show extra_float_digits",
        "select 0.1::float8 + 0.2::float8, 1::float4 / 3",
        "RESET extra_float_digits",
        "select 0.1::float8 + 0.2::float8, 1::float4 / 3",
    ], mode)


TS_SELECT = (
    "select '2024-03-10 06:59:59.999999+00'::timestamptz as before_dst, "
    "'2024-03-10 07:00:00+00'::timestamptz as after_dst, "
    "'2024-11-03 05:30:00+00'::timestamptz as fall_back, "
    "'2024-04-06 15:15:00+00'::timestamptz as lord_howe, "
    "'infinity'::timestamptz as inf, '-infinity'::timestamptz as ninf, "
    "'1900-01-01 00:00:00+00'::timestamptz as old, "
    "'0044-03-15 12:00:00+00 BC'::timestamptz as bc, "
    "'2024-02-29 12:34:56.789+05:30'::timestamptz as leap, "
    "'2024-01-02 03:04:05.6'::timestamp as ts, '2024-01-02'::date as d, "
    "'13:14:15.5+02'::timetz as ttz, '13:14:15'::time as t"
)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_timestamptz_timezones(proxy, mode, zone):
    steps = [f"SET TimeZone = '{zone}'", TS_SELECT, "show TimeZone"]
    for style in ("ISO, MDY", "SQL, DMY", "Postgres, MDY", "German, DMY", "ISO, YMD"):
        steps += [
            f"SET DateStyle = '{style}'",
            TS_SELECT,
            "select current_setting('DateStyle'), current_setting('TimeZone'), "
            "extract(timezone from '2024-06-01 00:00:00+00'::timestamptz) as off",
            ("select %s::timestamptz as p, %s::date as d",
             (datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc), datetime(2024, 5, 6).date())),
            "select to_char('2024-07-01 12:00:00+00'::timestamptz, 'YYYY-MM-DD HH24:MI TZ OF')",
        ]
    steps += ["SET TIME ZONE 'Asia/Kolkata'", TS_SELECT, "SET TIME ZONE LOCAL", "RESET ALL", TS_SELECT]
    compare(steps, mode)


INTERVALS = (
    "select interval '1 year 2 mons 3 days 04:05:06.789' as a, "
    "interval '-1 year +2 mons -3 days +04:05:06' as b, interval '0' as zero, "
    "interval '1 day -1 second' as c, interval '-00:00:01' as neg, "
    "interval 'P1Y2M3DT4H5M6S' as iso, interval '100 years 11 months' as big, "
    "make_interval(secs => 0.000001) as micro, '2024-03-01'::date - '2024-01-01'::date as days, "
    "'2024-03-01 00:00'::timestamp - '2024-01-01 12:30'::timestamp as diff"
)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_intervals(proxy, mode):
    compare([INTERVALS, ("select %s::interval", (timedelta(days=-1, seconds=5, microseconds=7),)),
             "select justify_interval(interval '1 mon -1 day'), age('2024-03-01', '2023-01-15')"],
            mode)


@pytest.mark.parametrize("mode", modes(session_guc="IntervalStyle"))
def test_interval_styles(proxy, mode):
    steps = [INTERVALS]
    for style in ("postgres", "postgres_verbose", "sql_standard", "iso_8601"):
        steps += [f"SET IntervalStyle = '{style}'", INTERVALS, "show IntervalStyle",
                  ("select %s::interval", (timedelta(days=-1, seconds=5, microseconds=7),))]
    steps += ["RESET IntervalStyle", INTERVALS]
    compare(steps, mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_session_settings(proxy, mode):
    """SET in one statement must be in force for the next one, even with transaction pooling
    (settings PostgreSQL reports with ParameterStatus)."""
    compare([
        "SET standard_conforming_strings = off",
        "select 'a\\\\b' as s",
        "RESET standard_conforming_strings",
        "select 'a\\\\b' as s",
        "SET client_encoding = 'LATIN1'",
        "select 'café' as c, convert_to('é', 'UTF8') as b",
        "select chr(128512)",
        "RESET client_encoding",
        "select chr(128512)",
        "SET TimeZone = 'Asia/Kolkata'",
        "RESET ALL",
        "show TimeZone",
    ], mode)


@pytest.mark.pgbouncer_xfail("PgBouncer 1.18 mis-tracks application_name: the ParameterStatus of a "
                             "SET inside a transaction is not passed on, and RESET ALL is not "
                             "tracked (the old name is re-applied on the next server connection)")
@pytest.mark.parametrize("mode", ALL_MODES)
def test_application_name_setting(proxy, mode):
    compare([
        "SET application_name = 'tg-it-app'",
        "select current_setting('application_name')",
        "RESET application_name",
        "select current_setting('application_name')",
        "SET application_name = 'tg-it-app-2'",
        "RESET ALL",
        "select current_setting('application_name')",
    ], mode, conn_kwargs={"application_name": "tg-it-startup-name"})


@pytest.mark.parametrize("mode", modes(session_guc="search_path (and any setting not reported by "
                                                  "ParameterStatus)"))
def test_session_settings_unreported(proxy, mode):
    """SET of settings PostgreSQL does not report (no ParameterStatus) must also persist."""
    compare([
        "SET search_path = pg_catalog, public",
        "show search_path",
        "select current_schemas(true)",
        "SET client_min_messages = 'warning'",
        "do $$ begin raise notice 'hidden'; raise warning 'shown'; end $$",
        "SET statement_timeout = '1234s'",
        "show statement_timeout",
        "SET work_mem = '7MB'",
        "select current_setting('work_mem')",
        "RESET ALL",
        "show search_path",
        "show statement_timeout",
    ], mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_errors(proxy, mode, scratch_table):
    t = scratch_table("id int primary key, v text unique")
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        c.execute(f"insert into {t} values (1, 'a')")
    compare([
        "selec 1",
        "select 1 +",
        "select 1/0",
        "select * from tg_it_no_such_table",
        "select no_such_column from pg_class",
        "select 'x'::int",
        ("select %s::int", ("abc",)),
        "select (select 1 union select 2)",
        f"insert into {t} values (1, 'b')",
        f"insert into {t} values (2, 'a')",
        f"insert into {t} values (null, 'z')",
        "do $$ begin raise exception 'custom failure %', 42 using errcode = 'TG001', "
        "detail = 'the detail', hint = 'the hint'; end $$",
        "do $$ begin raise sqlstate 'P0042' using message = 'by sqlstate', column = 'col_x', "
        "constraint = 'con_y', datatype = 'type_z', table = 'tab_w', schema = 'sch_v'; end $$",
        "do $$ begin execute 'selec 2'; end $$",
        "do $$ begin perform 1/0; end $$",
        "select 1",
        f"select id, v from {t} order by id",
    ], mode)


@pytest.mark.parametrize("mode", modes(["simple", "binary", "prepared"]))
def test_hundred_thousand_rows(proxy, mode):
    rows = compare([
        "select i, i * 7 % 1000 as m, md5(i::text) as h, repeat('x', i % 50) as pad, "
        "(i % 3 = 0) as flag, i::numeric / 7 as frac from generate_series(1, 100000) i",
        "select count(*), sum(i) from generate_series(1, 100000) i",
    ], mode, repeat_prepared=False)
    assert rows[0]["results"][0]["raw"]["rows"] == 100000
    assert rows[0]["results"][0]["rowcount"] == 100000


@pytest.mark.parametrize("mode", modes(["simple", "binary"]))
def test_wide_values(proxy, mode):
    compare([
        "select repeat('abc', 3000000) as nine_mb",
        "select convert_to(repeat('x', 4 * 1024 * 1024), 'UTF8') as four_mb_bytea",
        "select string_agg(md5(i::text), ',') from generate_series(1, 50000) i",
    ], mode)


@pytest.mark.parametrize("mode", SIMPLE_MODES)
def test_multi_statement_strings(proxy, mode, scratch_table):
    t = scratch_table("id int primary key, v text")
    compare([
        "select 1 as a; select 'x' as b, 2 as c",
        "select 1; select 1/0; select 3",
        "select 1; ; select 2;",
        f"begin; insert into {t} values (10, 'x'); select * from {t} where id = 10; rollback",
        f"insert into {t} values (20, 'y'); select 1/0",
        f"select count(*) from {t}",
        "set timezone = 'Asia/Kolkata'; select '2024-01-01 00:00:00+00'::timestamptz; reset timezone",
        "do $$ begin raise notice 'n1'; end $$; select 2 as two; "
        "do $$ begin raise notice 'n2'; end $$",
        f"insert into {t} values (30, 'z'); update {t} set v = 'zz' where id = 30; "
        f"delete from {t} where id = 30; select count(*) from {t}",
        "show TimeZone; show DateStyle",
    ], mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_empty_queries(proxy, mode):
    compare(["", ";", "-- only a comment", "   ", "select 1"], mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_notices(proxy, mode):
    compare([
        "do $$ begin raise notice 'hello %', 42; "
        "raise warning 'careful' using detail = 'd', hint = 'h', errcode = 'TG002'; "
        "raise info 'info message'; end $$",
        "drop table if exists tg_it_never_existed",
        "select 1",
    ], mode)


@pytest.mark.parametrize("mode", modes(["simple", "binary", "prepared", "txn"]))
def test_writes_command_tags(proxy, mode, scratch_table):
    t = scratch_table("id serial primary key, v text, n numeric")
    compare([
        f"insert into {t} (v, n) values ('a', 1), ('b', 2) returning v, n",
        f"update {t} set n = n + 1 where v in ('a', 'b')",
        f"delete from {t} where v = 'a'",
        f"delete from {t} where v = 'a'",
        f"select v, n from {t} order by v",
        f"delete from {t}",
        f"select setval('{t}_id_seq', 1, false)",
        f"create index {t}_v_idx on {t} (v)",
        f"drop index {t}_v_idx",
        f"explain (costs off) select * from {t} where id = 1",
    ], mode)


@pytest.mark.pgbouncer_xfail("SQL-level PREPARE creates session state; in transaction pooling the "
                             "next statement may run on another server connection")
@pytest.mark.parametrize("mode", modes(["simple", "binary", "txn"]))
def test_sql_prepare_execute(proxy, mode):
    compare([
        "prepare tg_it_p (int, text) as select $1 + 1 as n, $2 || '!' as s",
        "execute tg_it_p(41, 'hi')",
        "execute tg_it_p(1)",
        "select name, statement, parameter_types from pg_prepared_statements where name = 'tg_it_p'",
        "deallocate tg_it_p",
        "execute tg_it_p(41, 'hi')",
        "deallocate all",
    ], mode)


def test_startup_parameters(proxy):
    def params(dsn):
        with psycopg.connect(dsn, autocommit=True, application_name="tg-it-startup") as c:
            assert c.info.backend_pid != 0
            st = {k: c.info.parameter_status(k) for k in h.REPORTED_PARAMS}
            cur = c.execute("select current_setting('application_name'), current_user")
            return st, cur.fetchall()

    h.assert_same(params(h.direct_dsn()), params(h.proxy_dsn()), "ParameterStatus after startup")


@pytest.mark.pgbouncer_xfail("the `options` startup parameter is refused "
                             "(unsupported startup parameter: options)")
def test_startup_options_parameter(proxy):
    def run(dsn):
        with psycopg.connect(dsn, autocommit=True,
                             options="-c TimeZone=Asia/Kolkata -c DateStyle=SQL,DMY") as c:
            st = {k: c.info.parameter_status(k) for k in ("TimeZone", "DateStyle")}
            cur = c.execute(TS_SELECT)
            return st, h.collect_results(cur)

    h.assert_same(run(h.direct_dsn()), run(h.proxy_dsn()), "startup options")


# --------------------------------------------------------------------------------------------
# COPY

COPY_COLS = "id int primary key, t text, b bytea, n numeric, ts timestamptz, arr text[]"
COPY_TEXT = (
    b"1\thello\t\\\\x00ff\t1.5\t2024-01-01 00:00:00+00\t{1,2}\n"
    b"2\ttab\\there\\nnewline\\\\back\t\\N\tNaN\t\\N\t{NULL,\"a b\"}\n"
    + "3\t😀 日本 e\u0301\t\\\\x\t-0.000001\tinfinity\t{}\n".encode()
    + b"4\t\t\\\\x" + bytes(range(256)).hex().encode() + b"\t1e10\t1999-12-31 23:59:59.999999-08\t{\"q\\\\\"x\"}\n"
)
COPY_CSV = (
    "id,t,b,n,ts,arr\n"
    "1,\"comma, quote\"\"s\",\\x00,2,2024-01-01 00:00:00+00,\"{a,b}\"\n"
    "2,\"multi\nline\",,,,\n"
    "3,😀,\\x41,-1,2024-06-01 12:00:00+05:30,{}\n"
).encode()


def _table_raw(conn, table):
    out = []
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute(f"select * from {table} order by id")
        out.append(h.collect_results(cur))
    return out


def _copy_in(dsn, table, copy_sql, data, autocommit, chunk):
    rec = {}
    with psycopg.connect(dsn, autocommit=autocommit) as c:
        c.execute(f"truncate {table}")
        cur = c.cursor()
        try:
            with cur.copy(copy_sql) as cp:
                for part in h.iter_chunks(data, chunk):
                    cp.write(part)
            rec["status"] = cur.statusmessage
            rec["rowcount"] = cur.rowcount
        except psycopg.Error as e:
            rec["error"] = h.error_dict(e)
        rec["txstatus"] = c.info.transaction_status.name
        if not autocommit:
            c.rollback() if "error" in rec else c.commit()
        c.autocommit = True
        rec["content"] = _table_raw(c, table)
        rec["after"] = c.execute("select 42").fetchone()
    return rec


def _binary_copy_data(table):
    """COPY BINARY bytes of the text fixture, produced directly."""
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        c.execute(f"truncate {table}")
        with c.cursor().copy(f"copy {table} from stdin") as cp:
            cp.write(COPY_TEXT)
        buf = bytearray()
        with c.cursor().copy(f"copy {table} to stdout (format binary)") as cp:
            for data in cp:
                buf += data
        c.execute(f"truncate {table}")
        return bytes(buf)


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "txn"])
@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_from_stdin(proxy, scratch_table, fmt, autocommit):
    t = scratch_table(COPY_COLS)
    if fmt == "text":
        sql, data = f"copy {t} from stdin", COPY_TEXT
    elif fmt == "csv":
        sql, data = f"copy {t} from stdin (format csv, header true)", COPY_CSV
    else:
        sql, data = f"copy {t} from stdin (format binary)", _binary_copy_data(t)
    for chunk in (7, 1 << 20):
        d = _copy_in(h.direct_dsn(), t, sql, data, autocommit, chunk)
        p = _copy_in(h.proxy_dsn(), t, sql, data, autocommit, chunk)
        h.assert_same(d, p, f"COPY FROM STDIN ({fmt}, chunk {chunk})")
        assert d["rowcount"] in (3, 4), d


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "txn"])
def test_copy_from_stdin_errors(proxy, scratch_table, autocommit):
    t = scratch_table(COPY_COLS)
    bad = b"1\ta\t\\N\t1\t\\N\t\\N\nabc\tb\t\\N\t1\t\\N\t\\N\n"
    short = b"1\ta\n"
    dup = b"1\ta\t\\N\t1\t\\N\t\\N\n1\tb\t\\N\t1\t\\N\t\\N\n"
    for data in (bad, short, dup):
        d = _copy_in(h.direct_dsn(), t, f"copy {t} from stdin", data, autocommit, 5)
        p = _copy_in(h.proxy_dsn(), t, f"copy {t} from stdin", data, autocommit, 5)
        h.assert_same(d, p, "failing COPY FROM STDIN")
        assert "error" in d


def test_copy_from_stdin_client_abort(proxy, scratch_table):
    """The client aborts a COPY (CopyFail); the connection stays usable and nothing is loaded."""
    t = scratch_table(COPY_COLS)

    def run(dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            cur = c.cursor()
            with pytest.raises(RuntimeError):
                with cur.copy(f"copy {t} from stdin") as cp:
                    cp.write(COPY_TEXT[:20])
                    raise RuntimeError("client gave up")
            return (c.info.transaction_status.name,
                    c.execute(f"select count(*) from {t}").fetchone(),
                    c.execute("select 1").fetchone())

    h.assert_same(run(h.direct_dsn()), run(h.proxy_dsn()), "COPY aborted by the client")


def _copy_out(dsn, sql, autocommit):
    with psycopg.connect(dsn, autocommit=autocommit) as c:
        cur = c.cursor()
        buf = bytearray()
        chunks = 0
        with cur.copy(sql) as cp:
            for data in cp:
                buf += data
                chunks += 1
        rec = {"status": cur.statusmessage, "rowcount": cur.rowcount, "bytes": len(buf),
               "sha256": hashlib.sha256(buf).hexdigest(), "head": bytes(buf[:200])}
        if not autocommit:
            c.commit()
        return rec


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "txn"])
@pytest.mark.parametrize("fmt", ["text", "csv header", "binary"])
def test_copy_to_stdout(proxy, scratch_table, fmt, autocommit):
    t = scratch_table(COPY_COLS)
    with psycopg.connect(h.direct_dsn(), autocommit=True) as c:
        with c.cursor().copy(f"copy {t} from stdin") as cp:
            cp.write(COPY_TEXT)
    opts = {"text": "", "csv header": "(format csv, header true)", "binary": "(format binary)"}[fmt]
    for sql in (
        f"copy {t} to stdout {opts}",
        f"copy (select * from {t} order by id desc) to stdout {opts}",
        f"copy (select i, md5(i::text), i::numeric / 3 from generate_series(1, 100000) i) "
        f"to stdout {opts}",
    ):
        d = _copy_out(h.direct_dsn(), sql, autocommit)
        p = _copy_out(h.proxy_dsn(), sql, autocommit)
        h.assert_same(d, p, f"COPY TO STDOUT ({sql[:60]})")
        assert d["bytes"] > 0


# --------------------------------------------------------------------------------------------
# LISTEN / NOTIFY


@pytest.mark.pgbouncer_xfail("LISTEN is lost in transaction pooling: the listening server "
                             "connection goes back to the pool (NOTIFY may even be delivered to the "
                             "notifying client)")
def test_listen_notify(proxy):
    chan = h.unique_name("tg_it_chan")

    def run(dsn):
        with psycopg.connect(dsn, autocommit=True) as lc, psycopg.connect(dsn, autocommit=True) as nc:
            lc.execute(f"LISTEN {chan}")
            nc.execute(f"NOTIFY {chan}, 'hello ☃'")
            nc.execute("select pg_notify(%s, %s)", (chan, "second"))
            with nc.transaction():
                nc.execute(f"NOTIFY {chan}, 'in-transaction'")
            got = [(n.channel, n.payload) for n in lc.notifies(timeout=5, stop_after=3)]
            # the listener keeps working as a normal client in between
            lc.execute("select 1").fetchone()
            nc.execute(f"NOTIFY {chan}, 'fourth'")
            got += [(n.channel, n.payload) for n in lc.notifies(timeout=5, stop_after=1)]
            lc.execute(f"UNLISTEN {chan}")
            nc.execute(f"NOTIFY {chan}, 'after-unlisten'")
            late = [(n.channel, n.payload) for n in lc.notifies(timeout=0.5)]
            return got, late

    d = run(h.direct_dsn())
    assert d == ([(chan, "hello ☃"), (chan, "second"), (chan, "in-transaction"), (chan, "fourth")], [])
    p = run(h.proxy_dsn())
    h.assert_same(d, p, "LISTEN/NOTIFY")


# --------------------------------------------------------------------------------------------
# Cancel


def _cancel_run(dsn, how, in_txn):
    with psycopg.connect(dsn, autocommit=not in_txn) as c:
        timer = threading.Timer(0.5, getattr(c, how))
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as ei:
                c.execute("select pg_sleep(10)")
        finally:
            timer.join()
        elapsed = time.monotonic() - t0
        assert elapsed < 5, f"cancel took {elapsed:.1f} s"
        status = c.info.transaction_status.name
        if in_txn:
            c.rollback()
        after = c.execute("select 42").fetchone()
        if in_txn:
            c.commit()
        return h.error_dict(ei.value), status, after


@pytest.mark.parametrize("in_txn", [False, True], ids=["autocommit", "txn"])
@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_cancel(proxy, how, in_txn):
    d = _cancel_run(h.direct_dsn(), how, in_txn)
    p = _cancel_run(h.proxy_dsn(), how, in_txn)
    h.assert_same(d, p, "cancelled pg_sleep")
    assert d[0]["sqlstate"] == "57014"


def test_cancel_hits_only_its_own_query(proxy):
    """With transaction pooling the cancel key must map to the right client's backend."""
    results = {}

    def victim():
        with psycopg.connect(h.proxy_dsn(), autocommit=True) as c:
            try:
                c.execute("select pg_sleep(1.5)")
                results["victim"] = "ok"
            except psycopg.Error as e:
                results["victim"] = e.sqlstate

    with psycopg.connect(h.proxy_dsn(), autocommit=True) as target:
        th = threading.Thread(target=victim)
        th.start()
        time.sleep(0.2)
        timer = threading.Timer(0.5, target.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            target.execute("select pg_sleep(10)")
        timer.join()
        th.join(10)
        assert target.execute("select 1").fetchone() == (1,)
    assert results.get("victim") == "ok", results


# --------------------------------------------------------------------------------------------
# Many concurrent clients


@pytest.mark.parametrize("prepared", [
    pytest.param(False, id="unnamed"),
    pytest.param(True, id="named-prepared", marks=pytest.mark.pgbouncer_xfail(PREPARED_LIMITATION)),
])
def test_200_concurrent_clients(proxy, prepared):
    n_clients, n_tx = 200, 20
    barrier = threading.Barrier(n_clients, timeout=60)
    done = []

    def client(i):
        with psycopg.connect(h.proxy_dsn(application_name=f"tg-it-{i}"), autocommit=True,
                             prepare_threshold=h.NEVER_AUTO_PREPARE) as c:
            barrier.wait()
            for k in range(n_tx):
                with c.transaction():
                    # the text differs per client while psycopg names it _pg3_0 in every client
                    r = c.execute(f"select %s::int as id, %s::int as k, 'client-{i}' as tag, "
                                  f"current_setting('application_name') as app",
                                  (i, k), prepare=prepared).fetchone()
                    assert r == (i, k, f"client-{i}", f"tg-it-{i}"), (i, k, r)
                    r = c.execute("select %s::text || '/' || %s::text", (f"c{i}", str(k)),
                                  prepare=prepared).fetchone()
                    assert r == (f"c{i}/{k}",), (i, k, r)
            # and outside a transaction
            r = c.execute(f"select %s::int, 'client-{i}'", (i,), prepare=prepared).fetchone()
            assert r == (i, f"client-{i}"), (i, r)
            done.append(i)

    errors = h.run_threads(n_clients, client, timeout=120)
    assert not errors, f"{len(errors)} clients failed; first: {errors[0]!r}"
    assert sorted(done) == list(range(n_clients))
