-- Plain-PostgreSQL flavour: the TimescaleDB functions market-data queries use, with TimescaleDB's
-- semantics, so the same queries run unchanged on both flavours.
--
-- time_bucket(width, ts [, origin]): buckets aligned to TimescaleDB's default origin, Monday
-- 2000-01-03 00:00 UTC (so weekly buckets start on Mondays), or to 2000-01-01 for widths in months
-- or years (which may not also have days or a time part). timestamptz buckets are computed in UTC.
-- first(value, time) / last(value, time): the value at the earliest / latest time (rows with a NULL
-- time are ignored; on equal times the first row seen wins), for the value types market data uses.

CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz, origin timestamptz)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    months integer := extract(year FROM bucket_width)::integer * 12 + extract(month FROM bucket_width)::integer;
    since integer;
BEGIN
    IF months <> 0 THEN
        IF bucket_width <> make_interval(months => months) THEN
            RAISE EXCEPTION 'month intervals cannot have day or time component' USING ERRCODE = '22023';
        END IF;
        IF months < 0 THEN
            RAISE EXCEPTION 'period must be greater than 0' USING ERRCODE = '22023';
        END IF;
        since := (extract(year FROM ts AT TIME ZONE 'UTC')::integer - extract(year FROM origin AT TIME ZONE 'UTC')::integer) * 12
            + extract(month FROM ts AT TIME ZONE 'UTC')::integer - extract(month FROM origin AT TIME ZONE 'UTC')::integer;
        IF ts < origin + make_interval(months => since) THEN
            since := since - 1;
        END IF;
        RETURN origin + make_interval(months => (floor(since::numeric / months) * months)::integer);
    END IF;
    IF bucket_width <= interval '0' THEN
        RAISE EXCEPTION 'period must be greater than 0' USING ERRCODE = '22023';
    END IF;
    RETURN date_bin(bucket_width, ts, origin);
END $$;

CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT time_bucket(bucket_width, ts,
        CASE WHEN extract(year FROM bucket_width) <> 0 OR extract(month FROM bucket_width) <> 0
             THEN timestamptz '2000-01-01 00:00:00+00' ELSE timestamptz '2000-01-03 00:00:00+00' END)
$$;

CREATE FUNCTION time_bucket(bucket_width interval, ts timestamp)
RETURNS timestamp LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT time_bucket(bucket_width, ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

CREATE FUNCTION time_bucket(bucket_width interval, ts timestamp, origin timestamp)
RETURNS timestamp LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT time_bucket(bucket_width, ts AT TIME ZONE 'UTC', origin AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

-- first() and last() for each value type: a composite state (time, value) and SQL state functions.
DO $$
DECLARE
    value_type text;
    suffix text;
BEGIN
    FOREACH value_type IN ARRAY ARRAY['numeric', 'double precision', 'real', 'bigint', 'integer', 'smallint', 'text']
    LOOP
        suffix := replace(value_type, ' ', '_');
        EXECUTE format('CREATE TYPE tidegate_pick_%s AS (t timestamptz, v %s)', suffix, value_type);
        EXECUTE format($f$
            CREATE FUNCTION tidegate_first_step_%1$s(s tidegate_pick_%1$s, v %2$s, t timestamptz)
            RETURNS tidegate_pick_%1$s LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
            'SELECT CASE WHEN t IS NULL THEN s WHEN s IS NULL OR t < (s).t THEN ROW(t, v)::tidegate_pick_%1$s ELSE s END'
            $f$, suffix, value_type);
        EXECUTE format($f$
            CREATE FUNCTION tidegate_last_step_%1$s(s tidegate_pick_%1$s, v %2$s, t timestamptz)
            RETURNS tidegate_pick_%1$s LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
            'SELECT CASE WHEN t IS NULL THEN s WHEN s IS NULL OR t > (s).t THEN ROW(t, v)::tidegate_pick_%1$s ELSE s END'
            $f$, suffix, value_type);
        EXECUTE format($f$
            CREATE FUNCTION tidegate_first_combine_%1$s(a tidegate_pick_%1$s, b tidegate_pick_%1$s)
            RETURNS tidegate_pick_%1$s LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
            'SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a WHEN (b).t < (a).t THEN b ELSE a END'
            $f$, suffix);
        EXECUTE format($f$
            CREATE FUNCTION tidegate_last_combine_%1$s(a tidegate_pick_%1$s, b tidegate_pick_%1$s)
            RETURNS tidegate_pick_%1$s LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
            'SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a WHEN (b).t > (a).t THEN b ELSE a END'
            $f$, suffix);
        EXECUTE format($f$
            CREATE FUNCTION tidegate_pick_value_%1$s(s tidegate_pick_%1$s) RETURNS %2$s
            LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT (s).v'
            $f$, suffix, value_type);
        EXECUTE format($f$
            CREATE AGGREGATE first(%2$s, timestamptz) (
                SFUNC = tidegate_first_step_%1$s, STYPE = tidegate_pick_%1$s,
                COMBINEFUNC = tidegate_first_combine_%1$s, FINALFUNC = tidegate_pick_value_%1$s, PARALLEL = SAFE)
            $f$, suffix, value_type);
        EXECUTE format($f$
            CREATE AGGREGATE last(%2$s, timestamptz) (
                SFUNC = tidegate_last_step_%1$s, STYPE = tidegate_pick_%1$s,
                COMBINEFUNC = tidegate_last_combine_%1$s, FINALFUNC = tidegate_pick_value_%1$s, PARALLEL = SAFE)
            $f$, suffix, value_type);
    END LOOP;
END $$;
