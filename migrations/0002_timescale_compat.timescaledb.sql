-- TimescaleDB flavour: time_bucket(), first() and last() come with the extension (migration 1
-- created it); the plain-PostgreSQL flavour of this version defines them with the same semantics.
SELECT 1;
