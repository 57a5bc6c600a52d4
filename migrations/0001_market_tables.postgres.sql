-- Market-data tables, plain PostgreSQL flavour: ticks and quotes are range-partitioned by day on ts.
-- tidegate_ensure_partitions() creates the daily partitions (migrate creates today's and the next
-- week's; the maintenance job keeps creating ahead); rows outside every daily partition land in the
-- DEFAULT partition, so an insert never fails for want of one.

CREATE TABLE instruments (
    symbol      text PRIMARY KEY CHECK (symbol <> '' AND symbol = upper(symbol)),
    exchange    text NOT NULL,
    asset_class text NOT NULL CHECK (asset_class IN ('equity', 'etf', 'future', 'option', 'fx', 'crypto', 'index')),
    tick_size   numeric NOT NULL CHECK (tick_size > 0),
    currency    char(3) NOT NULL CHECK (currency = upper(currency))
);

CREATE TABLE ticks (
    ts         timestamptz NOT NULL,
    symbol     text NOT NULL,
    price      numeric NOT NULL CHECK (price > 0),
    size       bigint NOT NULL CHECK (size >= 0),
    exchange   text NOT NULL,
    trade_id   bigint NOT NULL,
    conditions text[] NOT NULL DEFAULT '{}',
    -- The natural key: a trade reported twice is a duplicate.
    PRIMARY KEY (symbol, ts, trade_id)
) PARTITION BY RANGE (ts);

CREATE TABLE ticks_default PARTITION OF ticks DEFAULT;
CREATE INDEX ticks_symbol_ts ON ticks (symbol, ts DESC);

CREATE TABLE quotes (
    ts       timestamptz NOT NULL,
    symbol   text NOT NULL,
    bid      numeric NOT NULL CHECK (bid > 0),
    ask      numeric NOT NULL CHECK (ask > 0),
    bid_size bigint NOT NULL CHECK (bid_size >= 0),
    ask_size bigint NOT NULL CHECK (ask_size >= 0),
    CHECK (bid <= ask)
) PARTITION BY RANGE (ts);

CREATE TABLE quotes_default PARTITION OF quotes DEFAULT;
CREATE INDEX quotes_symbol_ts ON quotes (symbol, ts DESC);

-- Creates the daily partitions of `parent` covering [from_day, from_day + days) that do not exist
-- yet, named <parent>_pYYYYMMDD. Returns how many it created.
CREATE FUNCTION tidegate_ensure_partitions(parent regclass, from_day date, days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day date;
    created integer := 0;
    partition_name text;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        day := from_day + i;
        partition_name := format('%s_p%s', parent::text, to_char(day, 'YYYYMMDD'));
        IF to_regclass(partition_name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                partition_name, parent, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

SELECT tidegate_ensure_partitions('ticks', (now() AT TIME ZONE 'UTC')::date, 8);
SELECT tidegate_ensure_partitions('quotes', (now() AT TIME ZONE 'UTC')::date, 8);
