-- Retention keeps the bars in step with ticks, plain-PostgreSQL flavour. Migration 5's retention
-- dropped tick partitions and deleted old DEFAULT-partition rows directly, which fires no trigger on
-- ticks: the bars of those ticks stayed, and the multi-timeframe rewrite returned them where the raw
-- query returns nothing. Now, for ticks, the bars of every level inside a dropped daily partition's
-- range are deleted with it (a UTC day is whole buckets at every level), and the DEFAULT partition's
-- old rows are deleted through ticks, so the statement trigger marks their minutes stale and the
-- watermark keeps the rewrite off them until the next refresh rebuilds them.
CREATE OR REPLACE FUNCTION tidegate_drop_partitions_before(parent regclass, cutoff timestamptz)
RETURNS TABLE (part text, action text, rows bigint)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    time_column text;
    deleted bigint;
    level text;
    is_ticks constant boolean := parent = to_regclass('ticks');
BEGIN
    SELECT a.attname INTO time_column
    FROM pg_partitioned_table pt JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent;
    IF time_column IS NULL THEN
        RAISE EXCEPTION '% is not a range-partitioned table', parent;
    END IF;
    FOR p IN SELECT tp.part, tp.range_start, tp.range_end, tp.is_default FROM tidegate_partitions(parent) tp LOOP
        IF p.is_default THEN
            IF is_ticks THEN
                EXECUTE format('DELETE FROM %s WHERE tableoid = %L::regclass AND %I < %L', parent, p.part, time_column, cutoff);
            ELSE
                EXECUTE format('DELETE FROM %I WHERE %I < %L', p.part, time_column, cutoff);
            END IF;
            GET DIAGNOSTICS deleted = ROW_COUNT;
            IF deleted > 0 THEN
                part := p.part; action := 'deleted'; rows := deleted;
                RETURN NEXT;
            END IF;
        ELSIF p.range_end IS NOT NULL AND p.range_end <= cutoff THEN
            rows := tidegate_rows_estimate(p.part::regclass);
            EXECUTE format('DROP TABLE %I', p.part);
            IF is_ticks THEN
                FOREACH level IN ARRAY ARRAY['bars_1m', 'bars_5m', 'bars_15m', 'bars_1h', 'bars_1d'] LOOP
                    IF to_regclass(level) IS NOT NULL THEN
                        EXECUTE format('DELETE FROM %I WHERE bucket >= %L AND bucket < %L', level, p.range_start, p.range_end);
                    END IF;
                END LOOP;
                DELETE FROM tidegate_bars_dirty WHERE bucket >= p.range_start AND bucket < p.range_end;
            END IF;
            part := p.part; action := 'dropped';
            RETURN NEXT;
        END IF;
    END LOOP;
END $$;

-- Migration 4's inlined time_bucket answered a zero or negative width with date_bin's SQLSTATE 22008;
-- TimescaleDB and migration 2 answer 22023 ("period must be greater than 0"): such widths go to the
-- PL/pgSQL form again.
CREATE OR REPLACE FUNCTION time_bucket(bucket_width interval, ts timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN extract(year FROM bucket_width) = 0 AND extract(month FROM bucket_width) = 0
             AND bucket_width > interval '0'
            THEN date_bin(bucket_width, ts, timestamptz '2000-01-03 00:00:00+00')
        ELSE time_bucket(bucket_width, ts,
            CASE WHEN extract(year FROM bucket_width) <> 0 OR extract(month FROM bucket_width) <> 0
                 THEN timestamptz '2000-01-01 00:00:00+00' ELSE timestamptz '2000-01-03 00:00:00+00' END)
    END
$$;
