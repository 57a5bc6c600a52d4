-- OHLCV bars for 1m, 5m, 15m, 1h and 1d, TimescaleDB flavour: hierarchical continuous aggregates
-- (TimescaleDB 2.9 or later) 1m → 5m → 15m → 1h → 1d, each refreshed by a policy.
-- CALL tidegate_refresh_bars_now() refreshes them all at once (the plain flavour has the same procedure).

CREATE MATERIALIZED VIEW bars_1m WITH (timescaledb.continuous) AS
SELECT symbol, time_bucket('1 minute', ts) AS bucket, first(price, ts) AS open, max(price) AS high,
       min(price) AS low, last(price, ts) AS close, sum(size) AS volume, count(*) AS trade_count,
       sum(price * size) / nullif(sum(size), 0) AS vwap
FROM ticks GROUP BY symbol, time_bucket('1 minute', ts) WITH NO DATA;

-- Each coarser level from the one below it.
DO $$
DECLARE
    levels constant text[] := ARRAY['bars_5m', 'bars_15m', 'bars_1h', 'bars_1d'];
    widths constant text[] := ARRAY['5 minutes', '15 minutes', '1 hour', '1 day'];
    below text := 'bars_1m';
BEGIN
    FOR i IN 1 .. array_length(levels, 1) LOOP
        EXECUTE format($q$
            CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous) AS
            SELECT symbol, time_bucket(%L, bucket) AS bucket, first(open, bucket) AS open, max(high) AS high,
                   min(low) AS low, last(close, bucket) AS close, sum(volume) AS volume,
                   sum(trade_count) AS trade_count, sum(vwap * volume) / nullif(sum(volume), 0) AS vwap
            FROM %I GROUP BY symbol, time_bucket(%L, bucket) WITH NO DATA $q$,
            levels[i], widths[i], below, widths[i]);
        below := levels[i];
    END LOOP;
END $$;

SELECT add_continuous_aggregate_policy('bars_1m', start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('bars_5m', start_offset => INTERVAL '6 hours', end_offset => INTERVAL '5 minutes', schedule_interval => INTERVAL '5 minutes');
SELECT add_continuous_aggregate_policy('bars_15m', start_offset => INTERVAL '1 day', end_offset => INTERVAL '15 minutes', schedule_interval => INTERVAL '15 minutes');
SELECT add_continuous_aggregate_policy('bars_1h', start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour');
SELECT add_continuous_aggregate_policy('bars_1d', start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 day');

-- Refreshes every level now, finest first (refresh_continuous_aggregate cannot run inside a
-- transaction block, so this is a procedure: CALL tidegate_refresh_bars_now()).
CREATE PROCEDURE tidegate_refresh_bars_now() LANGUAGE plpgsql AS $$
BEGIN
    CALL refresh_continuous_aggregate('bars_1m', NULL, NULL);
    COMMIT;
    CALL refresh_continuous_aggregate('bars_5m', NULL, NULL);
    COMMIT;
    CALL refresh_continuous_aggregate('bars_15m', NULL, NULL);
    COMMIT;
    CALL refresh_continuous_aggregate('bars_1h', NULL, NULL);
    COMMIT;
    CALL refresh_continuous_aggregate('bars_1d', NULL, NULL);
END $$;
