-- Market-data tables, TimescaleDB flavour: ticks and quotes are hypertables with 1-day chunks and
-- hash space partitioning by symbol, compressed (segment by symbol, order by ts DESC) by policy, and
-- dropped by a retention policy. Written against TimescaleDB 2.x's documented API
-- (create_hypertable, add_dimension, ALTER TABLE … SET (timescaledb.compress …),
-- add_compression_policy, add_retention_policy); `tidegate policies apply` adjusts the intervals.

CREATE EXTENSION IF NOT EXISTS timescaledb;

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
    -- The natural key; a unique index on a hypertable must include its partitioning columns.
    PRIMARY KEY (symbol, ts, trade_id)
);

SELECT create_hypertable('ticks', 'ts', chunk_time_interval => INTERVAL '1 day', create_default_indexes => false);
SELECT add_dimension('ticks', 'symbol', number_partitions => 4);
CREATE INDEX ticks_symbol_ts ON ticks (symbol, ts DESC);
ALTER TABLE ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol', timescaledb.compress_orderby = 'ts DESC');
SELECT add_compression_policy('ticks', compress_after => INTERVAL '7 days');
SELECT add_retention_policy('ticks', drop_after => INTERVAL '365 days');

CREATE TABLE quotes (
    ts       timestamptz NOT NULL,
    symbol   text NOT NULL,
    bid      numeric NOT NULL CHECK (bid > 0),
    ask      numeric NOT NULL CHECK (ask > 0),
    bid_size bigint NOT NULL CHECK (bid_size >= 0),
    ask_size bigint NOT NULL CHECK (ask_size >= 0),
    CHECK (bid <= ask)
);

SELECT create_hypertable('quotes', 'ts', chunk_time_interval => INTERVAL '1 day', create_default_indexes => false);
SELECT add_dimension('quotes', 'symbol', number_partitions => 4);
CREATE INDEX quotes_symbol_ts ON quotes (symbol, ts DESC);
ALTER TABLE quotes SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol', timescaledb.compress_orderby = 'ts DESC');
SELECT add_compression_policy('quotes', compress_after => INTERVAL '7 days');
SELECT add_retention_policy('quotes', drop_after => INTERVAL '90 days');
