-- Multi-timeframe rewrite support, TimescaleDB flavour. Tidegate rewrites a time_bucket aggregate over
-- ticks to read the coarsest bars rollup whose width divides the query's width, for the part of the
-- range the rollup has materialized, and raw ticks for the rest (docs/ARCHITECTURE.md, "Rollup
-- rewrite"). The rewritten statement calls these functions; both flavours define them alike, only
-- tidegate_rollup_watermark differs. Here the rollups are the hierarchical continuous aggregates of
-- migration 3 and time_bucket is TimescaleDB's own (same buckets as the plain flavour's).

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

-- The earliest time at or after `from_ts` from which `rollup` (a bars continuous aggregate) may differ
-- from aggregating ticks in this snapshot: every bar whose bucket lies wholly in [from_ts, result)
-- equals the aggregate of the ticks in it. Conservative: an earlier answer only means less rollup use.
--
-- The continuous aggregate and every level below it (bars_5m reads bars_1m's materialization
-- hypertable, and so on down to ticks) are walked through _timescaledb_catalog.continuous_agg
-- (raw_hypertable_id of a level = mat_hypertable_id of the level below). The result is the least of,
-- over every level:
--   * its materialization watermark (_timescaledb_catalog.continuous_aggs_watermark: the end of its
--     last materialized bucket; nothing after it is materialized, and migration 3's views are
--     materialized_only, the default since TimescaleDB 2.13; a real-time view returns rows past it,
--     which the rewrite never reads since its range ends at or before this watermark);
--   * the start of every pending invalidation that reaches from_ts or later: in the hypertable
--     invalidation log of its source hypertable (ticks, or the materialization hypertable of the level
--     below: changes not yet moved by a refresh) and in its own materialization invalidation log
--     (ranges moved there but not refreshed yet, including the never-refreshed ones: a new continuous
--     aggregate starts with one invalidation of the whole time range).
-- Changes after a source's invalidation threshold are not logged, but they lie after every watermark
-- of the continuous aggregates on that source. A change to ticks commits with its invalidation, and a
-- refresh commits its materialization with the removal of what it refreshed from the logs (moving
-- invalidations from one log to the other, in an earlier transaction, keeps them pending), so reading
-- the catalog in the query's snapshot matches the rows the query reads. The result is an instant, not
-- a bucket boundary: the rewrite ends the rollup's part at tidegate_rollup_end(width, result, false).
-- Times in these catalogs are TimescaleDB's internal time: microseconds since the Unix epoch, with
-- PG_INT64_MIN / PG_INT64_MAX for -infinity / +infinity; values before the first valid timestamp (the
-- remainders of the initial whole-range invalidation) hold no data (a hypertable rejects -infinity).
-- A transaction's own changes to ticks are logged only when it commits, so a transaction that has
-- written anything (it has a transaction ID) gets from_ts: no rollup use until it ends. (That check is
-- why the function is PARALLEL RESTRICTED.) Anything that is not a continuous aggregate gets from_ts
-- too. Written against TimescaleDB 2.19's catalog (_timescaledb_catalog.continuous_agg,
-- continuous_aggs_watermark, continuous_aggs_hypertable_invalidation_log,
-- continuous_aggs_materialization_invalidation_log; _timescaledb_functions.to_unix_microseconds and
-- to_timestamp).
CREATE FUNCTION tidegate_rollup_watermark(rollup regclass, from_ts timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL RESTRICTED AS $$
    WITH RECURSIVE levels AS (
        SELECT ca.mat_hypertable_id, ca.raw_hypertable_id, 1 AS depth
        FROM _timescaledb_catalog.continuous_agg ca
        JOIN pg_catalog.pg_class c ON c.relname = ca.user_view_name
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace AND n.nspname = ca.user_view_schema
        WHERE c.oid = rollup
      UNION ALL
        SELECT below.mat_hypertable_id, below.raw_hypertable_id, levels.depth + 1
        FROM levels
        JOIN _timescaledb_catalog.continuous_agg below ON below.mat_hypertable_id = levels.raw_hypertable_id
        WHERE levels.depth < 64
    ),
    -- from_ts in internal time; no invalidation wholly before the first valid timestamp
    -- (4714-11-24 00:00 UTC BC, internal -210866803200000000) counts.
    bound AS (
        SELECT CASE
            WHEN from_ts IS NULL OR from_ts = '-infinity' THEN '-210866803200000000'::bigint
            WHEN from_ts = 'infinity' THEN 9223372036854775807::bigint
            ELSE greatest(_timescaledb_functions.to_unix_microseconds(from_ts), '-210866803200000000'::bigint)
        END AS v
    ),
    candidates AS (
        -- A level without a watermark row is treated as materialized nowhere.
        SELECT coalesce(w.watermark, '-9223372036854775808'::bigint) AS v
        FROM levels
        LEFT JOIN _timescaledb_catalog.continuous_aggs_watermark w ON w.mat_hypertable_id = levels.mat_hypertable_id
      UNION ALL
        SELECT m.lowest_modified_value
        FROM levels
        JOIN _timescaledb_catalog.continuous_aggs_materialization_invalidation_log m
          ON m.materialization_id = levels.mat_hypertable_id
        WHERE m.greatest_modified_value >= (SELECT v FROM bound)
      UNION ALL
        SELECT h.lowest_modified_value
        FROM levels
        JOIN _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log h
          ON h.hypertable_id = levels.raw_hypertable_id
        WHERE h.greatest_modified_value >= (SELECT v FROM bound)
    ),
    earliest AS (
        SELECT CASE WHEN pg_catalog.pg_current_xact_id_if_assigned() IS NULL AND EXISTS (SELECT FROM levels)
                    THEN (SELECT min(v) FROM candidates)
                    ELSE '-9223372036854775808'::bigint END AS v
    )
    SELECT greatest(coalesce(from_ts, '-infinity'), CASE
        WHEN v < -210866803200000000 THEN '-infinity'::timestamptz
        WHEN v >= 9223371331200000000 THEN 'infinity'::timestamptz
        ELSE _timescaledb_functions.to_timestamp(v)
    END)
    FROM earliest
$$;
