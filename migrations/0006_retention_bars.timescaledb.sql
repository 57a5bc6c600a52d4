-- Retention keeps the bars in step with ticks: the plain-PostgreSQL flavour of this version fixes its
-- own retention function. On TimescaleDB, retention is drop_chunks by policy, and the continuous
-- aggregates keep their rows for dropped chunks, as TimescaleDB documents; nothing changes here.
SELECT 1;
