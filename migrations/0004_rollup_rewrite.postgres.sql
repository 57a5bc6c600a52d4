-- Multi-timeframe rewrite support, plain-PostgreSQL flavour. Tidegate rewrites a time_bucket aggregate
-- over ticks to read the coarsest bars rollup whose width divides the query's width, for the part of
-- the range the rollup has materialized, and raw ticks for the rest (docs/ARCHITECTURE.md, "Rollup
-- rewrite"). The rewritten statement calls these functions; both flavours define them alike, only
-- tidegate_rollup_watermark differs.

-- The first bucket start (of `width`, time_bucket's default origin) that lies inside a range bounded
-- below by `bound`: ts >= bound (inclusive) or ts > bound. Infinite bounds pass through. The width is
-- added in UTC, as time_bucket buckets: timestamptz + '1 day' would add a day of the session's time
-- zone (23 or 25 hours across a DST change) and miss the bucket boundary.
CREATE FUNCTION tidegate_rollup_start(width interval, bound timestamptz, inclusive boolean)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN bound IS NULL OR NOT isfinite(bound) THEN bound
        WHEN inclusive THEN ((time_bucket(width, bound - interval '1 microsecond') AT TIME ZONE 'UTC') + width) AT TIME ZONE 'UTC'
        ELSE ((time_bucket(width, bound) AT TIME ZONE 'UTC') + width) AT TIME ZONE 'UTC'
    END
$$;

-- The last bucket end (exclusive) of `width` such that the whole bucket lies inside a range bounded
-- above by `bound`: ts <= bound (inclusive) or ts < bound. Infinite bounds pass through.
CREATE FUNCTION tidegate_rollup_end(width interval, bound timestamptz, inclusive boolean)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN bound IS NULL OR NOT isfinite(bound) THEN bound
        WHEN inclusive THEN time_bucket(width, bound + interval '1 microsecond')
        ELSE time_bucket(width, bound)
    END
$$;

-- The earliest time at or after `from_ts` from which `rollup` (a bars table) may differ from ticks in
-- this snapshot: every bar whose bucket lies wholly in [from_ts, result) equals the aggregate of the
-- ticks in it. 'infinity' when nothing after from_ts is stale. Here a bar is stale exactly when a tick
-- change marked its minute in tidegate_bars_dirty (in the tick change's own transaction) and no
-- refresh has run since; tidegate_refresh_bars rebuilds every level in one transaction, so the same
-- watermark holds for all levels.
CREATE FUNCTION tidegate_rollup_watermark(rollup regclass, from_ts timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(min(bucket), 'infinity')
    FROM tidegate_bars_dirty
    -- A dirty minute m covers [m, m + 1 minute).
    WHERE bucket > coalesce(from_ts, '-infinity') - interval '1 minute'
$$;

CREATE INDEX tidegate_bars_dirty_bucket ON tidegate_bars_dirty (bucket);

-- Migration 3's rebuild joined ticks to the stale buckets on the symbol alone with the time range as a
-- join filter, so a refresh took time proportional to ticks × stale buckets per symbol (136 s for
-- 60,000 ticks). The rebuild now scans only the time span of the stale buckets and hash-joins on
-- (symbol, bucket); it analyses the temporary table of stale buckets so the planner knows its size, and
-- groups in memory (work_mem for the refresh's transaction).
CREATE OR REPLACE FUNCTION tidegate_rebuild_bars(level text, width interval, source text, stale text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    rebuilt bigint;
    first_bucket timestamptz;
    last_bucket timestamptz;
BEGIN
    -- Grouping a large refresh in memory rather than in batches on disk, and no JIT compilation (it
    -- took longer than the refresh itself: about 1 s a statement).
    PERFORM set_config('work_mem', '256MB', true);
    PERFORM set_config('jit', 'off', true);
    EXECUTE format('ANALYZE %I', stale);
    EXECUTE format('SELECT min(bucket), max(bucket) FROM %I', stale) INTO first_bucket, last_bucket;
    IF first_bucket IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM %I b USING %I s WHERE b.symbol = s.symbol AND b.bucket = s.bucket', level, stale);
    IF source = 'ticks' THEN
        EXECUTE format($q$
            INSERT INTO %I (symbol, bucket, open, high, low, close, volume, trade_count, vwap)
            SELECT t.symbol, time_bucket(%L, t.ts) AS bucket, first(t.price, t.ts), max(t.price), min(t.price),
                   last(t.price, t.ts), sum(t.size), count(*), sum(t.price * t.size) / nullif(sum(t.size), 0)
            FROM ticks t JOIN %I s ON t.symbol = s.symbol AND time_bucket(%L, t.ts) = s.bucket
            WHERE t.ts >= $1 AND t.ts < $2 + %L::interval
            GROUP BY t.symbol, 2 $q$, level, width, stale, width, width)
        USING first_bucket, last_bucket;
    ELSE
        EXECUTE format($q$
            INSERT INTO %I (symbol, bucket, open, high, low, close, volume, trade_count, vwap)
            SELECT f.symbol, time_bucket(%L, f.bucket) AS bucket, first(f.open, f.bucket), max(f.high), min(f.low),
                   last(f.close, f.bucket), sum(f.volume), sum(f.trade_count),
                   sum(f.vwap * f.volume) / nullif(sum(f.volume), 0)
            FROM %I f JOIN %I s ON f.symbol = s.symbol AND time_bucket(%L, f.bucket) = s.bucket
            WHERE f.bucket >= $1 AND f.bucket < $2 + %L::interval
            GROUP BY f.symbol, 2 $q$, level, width, source, stale, width, width)
        USING first_bucket, last_bucket;
    END IF;
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    RETURN rebuilt;
END $$;

-- time_bucket(width, timestamptz) of migration 2 called its PL/pgSQL form for every row (about 45 µs
-- a call). For widths without months it is date_bin with TimescaleDB's default origin (a Monday,
-- 2000-01-03), which PostgreSQL inlines into the query; months keep the PL/pgSQL form. Not STRICT, so
-- that it can be inlined; NULL in gives NULL out as before.
CREATE OR REPLACE FUNCTION time_bucket(bucket_width interval, ts timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN extract(year FROM bucket_width) = 0 AND extract(month FROM bucket_width) = 0
            THEN date_bin(bucket_width, ts, timestamptz '2000-01-03 00:00:00+00')
        ELSE time_bucket(bucket_width, ts, timestamptz '2000-01-01 00:00:00+00')
    END
$$;
