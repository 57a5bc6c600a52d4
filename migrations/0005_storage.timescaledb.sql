-- Storage maintenance and analytics, TimescaleDB flavour (written against TimescaleDB 2.x's documented
-- API: timescaledb_information.chunks / continuous_aggregates, chunks_detailed_size, hypertable_size,
-- chunk_compression_stats, hypertable_compression_stats, approximate_row_count).
--
-- tidegate_storage_history: relation sizes recorded by the maintenance job of `tidegate serve` (every
-- storage.history_interval_ms); SHOW STORAGE GROWTH fits the growth per day from it. The row of
-- relation '(database)' holds pg_database_size.
-- tidegate_storage_parts(): per relation and per chunk, rows, bytes, compression, time range (SHOW
-- STORAGE). Retention and compression are TimescaleDB's own policies (`tidegate policies apply`).

CREATE TABLE tidegate_storage_history (
    taken_at         timestamptz NOT NULL DEFAULT now(),
    relation         text NOT NULL,
    total_bytes      bigint NOT NULL CHECK (total_bytes >= 0),
    rows_estimate    bigint,
    compressed_bytes bigint,
    PRIMARY KEY (relation, taken_at)
);
CREATE INDEX tidegate_storage_history_taken_at ON tidegate_storage_history (taken_at);

-- The market-data relations and the hypertable that stores each (a continuous aggregate's
-- materialization hypertable); kind 'hypertable', 'continuous_aggregate' or 'table'.
CREATE FUNCTION tidegate_storage_relations()
RETURNS TABLE (relation text, kind text, time_column text, storage regclass, hypertable_schema text,
               hypertable_name text)
LANGUAGE sql STABLE AS $$
    SELECT r.relation, r.kind, r.time_column,
           CASE WHEN ca.view_name IS NULL THEN r.relation::regclass
                ELSE format('%I.%I', ca.materialization_hypertable_schema, ca.materialization_hypertable_name)::regclass END,
           coalesce(ca.materialization_hypertable_schema, h.hypertable_schema::text),
           coalesce(ca.materialization_hypertable_name, h.hypertable_name::text)
    FROM (VALUES ('ticks', 'hypertable', 'ts'), ('quotes', 'hypertable', 'ts'),
                 ('bars_1m', 'continuous_aggregate', 'bucket'), ('bars_5m', 'continuous_aggregate', 'bucket'),
                 ('bars_15m', 'continuous_aggregate', 'bucket'), ('bars_1h', 'continuous_aggregate', 'bucket'),
                 ('bars_1d', 'continuous_aggregate', 'bucket'), ('instruments', 'table', NULL))
         AS r (relation, kind, time_column)
    LEFT JOIN timescaledb_information.continuous_aggregates ca ON ca.view_name = r.relation
    LEFT JOIN timescaledb_information.hypertables h ON h.hypertable_name = r.relation
    WHERE to_regclass(r.relation) IS NOT NULL
$$;

-- Rows of one table: pg_class.reltuples when analyzed; an exact count when not and under 10 MB; NULL
-- otherwise.
CREATE FUNCTION tidegate_rows_estimate(rel regclass)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    tuples real;
    exact bigint;
BEGIN
    SELECT c.reltuples INTO tuples FROM pg_class c WHERE c.oid = rel;
    IF tuples >= 0 THEN
        RETURN tuples::bigint;
    END IF;
    IF pg_total_relation_size(rel) > 10 * 1024 * 1024 THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', rel) INTO exact;
    RETURN exact;
END $$;

-- SHOW STORAGE: one row per relation (part NULL) and one per chunk. Bytes: chunks_detailed_size /
-- hypertable_size (a compressed chunk counts its compressed size); compressed_bytes and
-- compression_ratio (before / after) from chunk_compression_stats / hypertable_compression_stats;
-- oldest/newest: the chunk's range (no scan); rows of a compressed chunk are NULL (not known without
-- decompressing it), approximate_row_count for a hypertable.
CREATE FUNCTION tidegate_storage_parts()
RETURNS TABLE (relation text, part text, rows_estimate bigint, total_bytes bigint, compressed_bytes bigint,
               compression_ratio numeric, oldest timestamptz, newest timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    c record;
BEGIN
    FOR r IN SELECT * FROM tidegate_storage_relations() LOOP
        IF r.kind = 'table' THEN
            relation := r.relation; part := NULL; rows_estimate := tidegate_rows_estimate(r.storage);
            total_bytes := pg_total_relation_size(r.storage); compressed_bytes := NULL; compression_ratio := NULL;
            oldest := NULL; newest := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        FOR c IN
            SELECT ch.chunk_schema, ch.chunk_name, ch.range_start, ch.range_end, ch.is_compressed, d.total_bytes AS bytes,
                   s.before_compression_total_bytes AS before, s.after_compression_total_bytes AS after
            FROM timescaledb_information.chunks ch
            LEFT JOIN chunks_detailed_size(r.storage) d ON d.chunk_schema = ch.chunk_schema AND d.chunk_name = ch.chunk_name
            LEFT JOIN chunk_compression_stats(r.storage) s ON s.chunk_schema = ch.chunk_schema AND s.chunk_name = ch.chunk_name
            WHERE ch.hypertable_schema = r.hypertable_schema AND ch.hypertable_name = r.hypertable_name
            ORDER BY ch.range_start, ch.chunk_name
        LOOP
            relation := r.relation; part := c.chunk_name;
            rows_estimate := CASE WHEN c.is_compressed THEN NULL
                                  ELSE tidegate_rows_estimate(format('%I.%I', c.chunk_schema, c.chunk_name)::regclass) END;
            total_bytes := coalesce(c.bytes, 0);
            compressed_bytes := CASE WHEN c.is_compressed THEN c.after END;
            compression_ratio := CASE WHEN c.is_compressed AND c.after > 0 THEN round(c.before::numeric / c.after, 2) END;
            oldest := c.range_start; newest := c.range_end;
            RETURN NEXT;
        END LOOP;
        relation := r.relation; part := NULL;
        rows_estimate := approximate_row_count(r.storage);
        total_bytes := coalesce(hypertable_size(r.storage), 0);
        SELECT hs.after_compression_total_bytes,
               CASE WHEN hs.after_compression_total_bytes > 0
                    THEN round(hs.before_compression_total_bytes::numeric / hs.after_compression_total_bytes, 2) END
          INTO compressed_bytes, compression_ratio
          FROM hypertable_compression_stats(r.storage) hs;
        SELECT min(ch.range_start), max(ch.range_end) INTO oldest, newest
          FROM timescaledb_information.chunks ch
          WHERE ch.hypertable_schema = r.hypertable_schema AND ch.hypertable_name = r.hypertable_name;
        RETURN NEXT;
    END LOOP;
END $$;

-- Records every relation's size, and the database's as relation '(database)', at one taken_at; history
-- older than 400 days is removed. Returns the number of rows recorded.
CREATE FUNCTION tidegate_record_storage()
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    recorded integer;
BEGIN
    INSERT INTO tidegate_storage_history (taken_at, relation, total_bytes, rows_estimate, compressed_bytes)
    SELECT now(), s.relation, s.total_bytes, s.rows_estimate, s.compressed_bytes
    FROM tidegate_storage_parts() s WHERE s.part IS NULL
    UNION ALL
    SELECT now(), '(database)', pg_database_size(current_database()), NULL, NULL
    ON CONFLICT (relation, taken_at) DO NOTHING;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    DELETE FROM tidegate_storage_history WHERE taken_at < now() - interval '400 days';
    RETURN recorded;
END $$;
