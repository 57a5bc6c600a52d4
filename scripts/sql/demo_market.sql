-- Tidegate demo: a small market-data schema and one trading day of deterministic sample ticks.
--
-- Usage (scripts/demo runs this; safe to re-run, data is inserted only once):
--   PGPASSWORD=tidegate psql -h 127.0.0.1 -p 15432 -U tidegate market -v ON_ERROR_STOP=1 \
--     -f scripts/sql/demo_market.sql
--
-- 10 instruments, 100,000 ticks (10,000 per symbol) on 2026-11-20 between 14:30 and 21:00 UTC
-- (the US regular session). Prices are random walks from setseed(), so every load is identical.

\set ON_ERROR_STOP 1
SET client_min_messages = warning;

BEGIN;

CREATE TABLE IF NOT EXISTS instruments (
    symbol      text PRIMARY KEY,
    exchange    text,
    asset_class text,
    tick_size   numeric,
    currency    text
);

CREATE TABLE IF NOT EXISTS ticks (
    ts         timestamptz   NOT NULL,
    symbol     text          NOT NULL REFERENCES instruments,
    price      numeric(18,6) NOT NULL CHECK (price > 0),
    size       bigint        NOT NULL CHECK (size >= 0),
    exchange   text,
    trade_id   bigint        NOT NULL,
    conditions text[],
    PRIMARY KEY (symbol, ts, trade_id)
);

CREATE INDEX IF NOT EXISTS ticks_symbol_ts_desc_idx ON ticks (symbol, ts DESC);

INSERT INTO instruments (symbol, exchange, asset_class, tick_size, currency) VALUES
    ('AAPL',  'XNAS', 'equity', 0.01, 'USD'),
    ('MSFT',  'XNAS', 'equity', 0.01, 'USD'),
    ('AMZN',  'XNAS', 'equity', 0.01, 'USD'),
    ('GOOGL', 'XNAS', 'equity', 0.01, 'USD'),
    ('NVDA',  'XNAS', 'equity', 0.01, 'USD'),
    ('META',  'XNAS', 'equity', 0.01, 'USD'),
    ('TSLA',  'XNAS', 'equity', 0.01, 'USD'),
    ('JPM',   'XNYS', 'equity', 0.01, 'USD'),
    ('XOM',   'XNYS', 'equity', 0.01, 'USD'),
    ('SPY',   'ARCX', 'etf',    0.01, 'USD')
ON CONFLICT (symbol) DO NOTHING;

-- Concurrent loaders wait here; the second one then sees a non-empty table and inserts nothing.
LOCK TABLE ticks IN SHARE ROW EXCLUSIVE MODE;

SELECT setseed(0.2026) AS seeded \gset

-- The random numbers are drawn in one ordered pass over generate_series (a materialized CTE), so
-- the data does not depend on the join plan.
WITH draws AS MATERIALIZED (
    SELECT n, random() AS r_step, random() AS r_time, random() AS r_size,
           random() AS r_venue, random() AS r_cond
    FROM generate_series(1, 100000) AS n
    WHERE NOT EXISTS (SELECT 1 FROM ticks)
    ORDER BY n
),
w AS (
    SELECT d.*,
           i.symbol,
           i.tick_size,
           b.open_price,
           (d.n - 1) / 10 AS k,
           -- a step of at most +/-0.05 % of the opening price
           (d.r_step::numeric - 0.5) * b.open_price * 0.001 AS step,
           ARRAY[i.exchange, 'XNAS', 'XNYS', 'ARCX', 'BATS', 'EDGX', 'IEXG'] AS venues
    FROM draws AS d
    JOIN (VALUES (0, 'AAPL', 228.50), (1, 'MSFT', 415.20), (2, 'AMZN', 201.75),
                 (3, 'GOOGL', 176.40), (4, 'NVDA', 145.90), (5, 'META', 560.30),
                 (6, 'TSLA', 338.60), (7, 'JPM', 242.10), (8, 'XOM', 119.80),
                 (9, 'SPY', 593.25)) AS b(idx, symbol, open_price)
      ON b.idx = (d.n - 1) % 10
    JOIN instruments AS i ON i.symbol = b.symbol
)
INSERT INTO ticks (ts, symbol, price, size, exchange, trade_id, conditions)
SELECT
    -- 10,000 ticks per symbol, one every 2.34 s on average, jittered, strictly inside the session
    timestamptz '2026-11-20 14:30:00+00'
        + make_interval(secs => round((w.k * 2.34 + w.r_time * 2.3)::numeric, 3)::double precision),
    w.symbol,
    -- random walk: opening price plus the running sum of the steps, rounded to the tick size
    greatest(round((w.open_price + sum(w.step) OVER (PARTITION BY w.symbol ORDER BY w.k))
                   / w.tick_size) * w.tick_size, w.tick_size),
    CASE WHEN w.r_size < 0.05 THEN 1 + floor(w.r_size * 1980)::bigint          -- odd lots 1..99
         ELSE 100 * (1 + floor(power(w.r_size, 4) * 50))::bigint               -- 100..5000
    END,
    w.venues[1 + floor(w.r_venue * array_length(w.venues, 1))::int],
    1000000 + w.n,
    CASE WHEN w.r_size < 0.05 THEN ARRAY['@', 'I']                              -- odd lot
         WHEN w.r_cond < 0.10 THEN ARRAY['@', 'F']                              -- intermarket sweep
         WHEN w.r_cond < 0.12 THEN ARRAY['@', 'T']                              -- extended hours
         ELSE ARRAY['@']
    END
FROM w;

COMMIT;

ANALYZE instruments;
ANALYZE ticks;

SELECT count(*) AS ticks, count(DISTINCT symbol) AS symbols, min(ts) AS first_ts, max(ts) AS last_ts
FROM ticks;
