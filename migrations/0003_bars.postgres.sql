-- OHLCV bars for 1m, 5m, 15m, 1h and 1d, plain-PostgreSQL flavour: rollup tables refreshed
-- incrementally. A statement trigger on ticks records which (symbol, minute) buckets received rows;
-- tidegate_refresh_bars() recomputes only those 1-minute bars from ticks, then only the coarser bars
-- that contain a recomputed finer bar, each from the level below (5m from 1m, 15m from 5m, 1h from
-- 15m, 1d from 1h). Updates and deletes of ticks mark their buckets too.

CREATE TABLE bars_1m (
    symbol      text NOT NULL,
    bucket      timestamptz NOT NULL,
    open        numeric NOT NULL,
    high        numeric NOT NULL,
    low         numeric NOT NULL,
    close       numeric NOT NULL,
    volume      bigint NOT NULL,
    trade_count bigint NOT NULL,
    vwap        numeric,
    PRIMARY KEY (symbol, bucket)
);
CREATE TABLE bars_5m (LIKE bars_1m INCLUDING ALL);
CREATE TABLE bars_15m (LIKE bars_1m INCLUDING ALL);
CREATE TABLE bars_1h (LIKE bars_1m INCLUDING ALL);
CREATE TABLE bars_1d (LIKE bars_1m INCLUDING ALL);

-- (symbol, 1-minute bucket) pairs whose bars are stale.
CREATE TABLE tidegate_bars_dirty (
    symbol text NOT NULL,
    bucket timestamptz NOT NULL,
    PRIMARY KEY (symbol, bucket)
);

CREATE FUNCTION tidegate_mark_bars_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO tidegate_bars_dirty (symbol, bucket)
        SELECT DISTINCT symbol, time_bucket('1 minute', ts) FROM changed_new
        ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO tidegate_bars_dirty (symbol, bucket)
        SELECT DISTINCT symbol, time_bucket('1 minute', ts) FROM changed_old
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ticks_bars_dirty_insert AFTER INSERT ON ticks
    REFERENCING NEW TABLE AS changed_new FOR EACH STATEMENT EXECUTE FUNCTION tidegate_mark_bars_dirty();
CREATE TRIGGER ticks_bars_dirty_update AFTER UPDATE ON ticks
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new FOR EACH STATEMENT EXECUTE FUNCTION tidegate_mark_bars_dirty();
CREATE TRIGGER ticks_bars_dirty_delete AFTER DELETE ON ticks
    REFERENCING OLD TABLE AS changed_old FOR EACH STATEMENT EXECUTE FUNCTION tidegate_mark_bars_dirty();

-- Recomputes the bars of one level for the given (symbol, bucket) pairs of that level, from `source`
-- (ticks for 1m, the level below otherwise). A bucket with no rows left loses its bar.
CREATE FUNCTION tidegate_rebuild_bars(level text, width interval, source text, stale text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    rebuilt bigint;
BEGIN
    EXECUTE format('DELETE FROM %I b USING %I s WHERE b.symbol = s.symbol AND b.bucket = s.bucket', level, stale);
    IF source = 'ticks' THEN
        EXECUTE format($q$
            INSERT INTO %I (symbol, bucket, open, high, low, close, volume, trade_count, vwap)
            SELECT t.symbol, time_bucket(%L, t.ts) AS bucket, first(t.price, t.ts), max(t.price), min(t.price),
                   last(t.price, t.ts), sum(t.size), count(*), sum(t.price * t.size) / nullif(sum(t.size), 0)
            FROM ticks t JOIN %I s ON t.symbol = s.symbol AND t.ts >= s.bucket AND t.ts < s.bucket + %L::interval
            GROUP BY t.symbol, 2 $q$, level, width, stale, width);
    ELSE
        EXECUTE format($q$
            INSERT INTO %I (symbol, bucket, open, high, low, close, volume, trade_count, vwap)
            SELECT f.symbol, time_bucket(%L, f.bucket) AS bucket, first(f.open, f.bucket), max(f.high), min(f.low),
                   last(f.close, f.bucket), sum(f.volume), sum(f.trade_count),
                   sum(f.vwap * f.volume) / nullif(sum(f.volume), 0)
            FROM %I f JOIN %I s ON f.symbol = s.symbol AND f.bucket >= s.bucket AND f.bucket < s.bucket + %L::interval
            GROUP BY f.symbol, 2 $q$, level, width, source, stale, width);
    END IF;
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    RETURN rebuilt;
END $$;

-- Brings every bar level up to date with ticks; returns the number of 1-minute buckets refreshed.
-- Concurrent calls are serialized (an advisory transaction lock).
CREATE FUNCTION tidegate_refresh_bars() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    stale bigint;
    levels constant text[] := ARRAY['bars_5m', 'bars_15m', 'bars_1h', 'bars_1d'];
    widths constant interval[] := ARRAY['5 minutes', '15 minutes', '1 hour', '1 day']::interval[];
    below text := 'bars_1m';
BEGIN
    PERFORM pg_advisory_xact_lock(7233884152);
    CREATE TEMP TABLE IF NOT EXISTS tidegate_stale (symbol text, bucket timestamptz, PRIMARY KEY (symbol, bucket))
        ON COMMIT DROP;
    TRUNCATE tidegate_stale;
    WITH taken AS (DELETE FROM tidegate_bars_dirty RETURNING symbol, bucket)
    INSERT INTO tidegate_stale SELECT symbol, bucket FROM taken;
    GET DIAGNOSTICS stale = ROW_COUNT;
    IF stale = 0 THEN
        RETURN 0;
    END IF;
    PERFORM tidegate_rebuild_bars('bars_1m', interval '1 minute', 'ticks', 'tidegate_stale');
    FOR i IN 1 .. array_length(levels, 1) LOOP
        CREATE TEMP TABLE IF NOT EXISTS tidegate_stale_next (symbol text, bucket timestamptz, PRIMARY KEY (symbol, bucket))
            ON COMMIT DROP;
        TRUNCATE tidegate_stale_next;
        INSERT INTO tidegate_stale_next
            SELECT DISTINCT symbol, time_bucket(widths[i], bucket) FROM tidegate_stale;
        PERFORM tidegate_rebuild_bars(levels[i], widths[i], below, 'tidegate_stale_next');
        TRUNCATE tidegate_stale;
        INSERT INTO tidegate_stale SELECT symbol, bucket FROM tidegate_stale_next;
        below := levels[i];
    END LOOP;
    RETURN stale;
END $$;

-- The same entry point as the TimescaleDB flavour: CALL tidegate_refresh_bars_now().
CREATE PROCEDURE tidegate_refresh_bars_now() LANGUAGE sql AS $$ SELECT tidegate_refresh_bars() $$;

-- Ticks loaded before this migration: their bars are due at the first refresh.
INSERT INTO tidegate_bars_dirty (symbol, bucket)
SELECT DISTINCT symbol, time_bucket('1 minute', ts) FROM ticks ON CONFLICT DO NOTHING;
