-- Storage maintenance and analytics, plain-PostgreSQL flavour.
--
-- tidegate_storage_history: relation sizes recorded by the maintenance job of `tidegate serve` (every
-- storage.history_interval_ms); SHOW STORAGE GROWTH fits the growth per day from it. The row of
-- relation '(database)' holds pg_database_size.
-- tidegate_storage_parts(): per relation and per partition, rows, bytes, time range (SHOW STORAGE).
-- tidegate_drop_partitions_before(parent, cutoff): retention for the daily partitions of ticks/quotes.
-- Indexes on the time column of the DEFAULT partitions and of the bars make their oldest/newest rows,
-- and retention's deletes there, index scans.

CREATE TABLE tidegate_storage_history (
    taken_at         timestamptz NOT NULL DEFAULT now(),
    relation         text NOT NULL,
    total_bytes      bigint NOT NULL CHECK (total_bytes >= 0),
    rows_estimate    bigint,
    compressed_bytes bigint,
    PRIMARY KEY (relation, taken_at)
);
CREATE INDEX tidegate_storage_history_taken_at ON tidegate_storage_history (taken_at);

CREATE INDEX ticks_default_ts ON ticks_default (ts);
CREATE INDEX quotes_default_ts ON quotes_default (ts);
CREATE INDEX bars_1m_bucket ON bars_1m (bucket);
CREATE INDEX bars_5m_bucket ON bars_5m (bucket);
CREATE INDEX bars_15m_bucket ON bars_15m (bucket);
CREATE INDEX bars_1h_bucket ON bars_1h (bucket);
CREATE INDEX bars_1d_bucket ON bars_1d (bucket);

-- The partitions of a range-partitioned parent with their bounds (NULL, NULL for the DEFAULT partition).
CREATE FUNCTION tidegate_partitions(parent regclass)
RETURNS TABLE (part text, range_start timestamptz, range_end timestamptz, is_default boolean)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz,
           pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent
    ORDER BY 2 NULLS FIRST
$$;

-- Retention: drops the daily partitions of `parent` that lie wholly before `cutoff` (their upper bound is
-- at or before it), and deletes the DEFAULT partition's rows older than `cutoff` (rows that missed every
-- daily partition must not outlive the retention either). Returns one row per partition dropped
-- (action 'dropped', rows: its row estimate) and, when any, one for the DEFAULT partition ('deleted',
-- rows deleted).
CREATE FUNCTION tidegate_drop_partitions_before(parent regclass, cutoff timestamptz)
RETURNS TABLE (part text, action text, rows bigint)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    time_column text;
    deleted bigint;
BEGIN
    SELECT a.attname INTO time_column
    FROM pg_partitioned_table pt JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent;
    IF time_column IS NULL THEN
        RAISE EXCEPTION '% is not a range-partitioned table', parent;
    END IF;
    FOR p IN SELECT tp.part, tp.range_end, tp.is_default FROM tidegate_partitions(parent) tp LOOP
        IF p.is_default THEN
            EXECUTE format('DELETE FROM %I WHERE %I < %L', p.part, time_column, cutoff);
            GET DIAGNOSTICS deleted = ROW_COUNT;
            IF deleted > 0 THEN
                part := p.part; action := 'deleted'; rows := deleted;
                RETURN NEXT;
            END IF;
        ELSIF p.range_end IS NOT NULL AND p.range_end <= cutoff THEN
            rows := tidegate_rows_estimate(p.part::regclass);
            EXECUTE format('DROP TABLE %I', p.part);
            part := p.part; action := 'dropped';
            RETURN NEXT;
        END IF;
    END LOOP;
END $$;

-- The market-data relations of this schema and how each is stored: 'partitioned' (ticks, quotes),
-- 'rollup' (bars tables) or 'table'.
CREATE FUNCTION tidegate_storage_relations()
RETURNS TABLE (relation text, kind text, time_column text)
LANGUAGE sql STABLE AS $$
    SELECT r.relation, r.kind, r.time_column
    FROM (VALUES ('ticks', 'partitioned', 'ts'), ('quotes', 'partitioned', 'ts'), ('bars_1m', 'rollup', 'bucket'),
                 ('bars_5m', 'rollup', 'bucket'), ('bars_15m', 'rollup', 'bucket'), ('bars_1h', 'rollup', 'bucket'),
                 ('bars_1d', 'rollup', 'bucket'), ('instruments', 'table', NULL)) AS r (relation, kind, time_column)
    WHERE to_regclass(r.relation) IS NOT NULL
$$;

-- Rows of one table: pg_class.reltuples when the table has been analyzed; an exact count when it has
-- not and is under 10 MB; NULL otherwise.
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

-- SHOW STORAGE: one row per relation (part NULL, sums over its parts) and one per partition. Bytes are
-- pg_total_relation_size (heap, indexes, TOAST). oldest/newest: a daily partition's bounds (no scan);
-- for the DEFAULT partition and the bars, min/max of the time column (index scans). No compression on
-- plain PostgreSQL: compressed_bytes and compression_ratio are NULL.
CREATE FUNCTION tidegate_storage_parts()
RETURNS TABLE (relation text, part text, rows_estimate bigint, total_bytes bigint, compressed_bytes bigint,
               compression_ratio numeric, oldest timestamptz, newest timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    p record;
    total_rows bigint;
    total bigint;
    low timestamptz;
    high timestamptz;
    first_time timestamptz;
    last_time timestamptz;
BEGIN
    FOR r IN SELECT * FROM tidegate_storage_relations() LOOP
        total_rows := 0; total := 0; first_time := NULL; last_time := NULL;
        IF r.kind = 'partitioned' THEN
            FOR p IN SELECT * FROM tidegate_partitions(r.relation::regclass) LOOP
                IF p.is_default THEN
                    EXECUTE format('SELECT min(%I), max(%I) FROM %I', r.time_column, r.time_column, p.part) INTO low, high;
                ELSE
                    low := p.range_start; high := p.range_end;
                END IF;
                relation := r.relation; part := p.part;
                rows_estimate := tidegate_rows_estimate(p.part::regclass);
                total_bytes := pg_total_relation_size(p.part::regclass);
                compressed_bytes := NULL; compression_ratio := NULL; oldest := low; newest := high;
                RETURN NEXT;
                total_rows := total_rows + coalesce(rows_estimate, 0);
                total := total + total_bytes;
                first_time := least(first_time, low);
                last_time := greatest(last_time, high);
            END LOOP;
            total := total + pg_total_relation_size(r.relation::regclass);
        ELSE
            total_rows := tidegate_rows_estimate(r.relation::regclass);
            total := pg_total_relation_size(r.relation::regclass);
            IF r.time_column IS NOT NULL THEN
                EXECUTE format('SELECT min(%I), max(%I) FROM %I', r.time_column, r.time_column, r.relation)
                    INTO first_time, last_time;
            END IF;
        END IF;
        relation := r.relation; part := NULL; rows_estimate := total_rows; total_bytes := total;
        compressed_bytes := NULL; compression_ratio := NULL; oldest := first_time; newest := last_time;
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
