-- heartguard-gateway: activity and data-gap reports from the gateways.
--
-- Install once on the central HeartGuard database (idempotent; no platform table is
-- changed). Gateways with [report] enabled upsert into these two tables; they need
-- SELECT, INSERT and UPDATE on them and nothing else:
--
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f heartguard-gateway-report.sql
--     GRANT SELECT, INSERT, UPDATE ON stream_activity, stream_gaps TO heartguard_gateway;
--
-- Times are UTC (TIMESTAMP without zone, like signal_streams). signal_streams.ended_at is
-- deliberately never written by gateways: it marks a stream as finished and would stop
-- attribution of the device's readings.

-- One row per (gateway, stream): totals since the gateway first saw the stream, and the
-- last reporting interval.
CREATE TABLE IF NOT EXISTS stream_activity (
  gateway_id          VARCHAR(64) NOT NULL,
  stream_id           UUID NOT NULL,
  last_reading_at     TIMESTAMP,            -- time of the newest reading received
  last_delivered_at   TIMESTAMP,            -- time of the newest point InfluxDB accepted
  readings_received   BIGINT NOT NULL,      -- readings queued for this stream, total
  points_delivered    BIGINT NOT NULL,      -- points InfluxDB accepted, total
  interval_started_at TIMESTAMP,            -- the previous report (NULL for the first)
  interval_readings   BIGINT NOT NULL,      -- readings since the previous report
  interval_points     BIGINT NOT NULL,      -- points delivered since the previous report
  reported_at         TIMESTAMP NOT NULL,
  PRIMARY KEY (gateway_id, stream_id)
);

-- A gap opens when a stream's readings stop for longer than its threshold (from
-- signal_streams.sample_rate_hz times the gateway's gap_factor, at least gap_min_ms); the
-- first reading after it closes it.
CREATE TABLE IF NOT EXISTS stream_gaps (
  gateway_id   VARCHAR(64) NOT NULL,
  stream_id    UUID NOT NULL,
  started_at   TIMESTAMP NOT NULL,          -- time of the last reading before the gap
  ended_at     TIMESTAMP,                   -- time of the first reading after it; NULL: open
  threshold_ms BIGINT NOT NULL,
  PRIMARY KEY (gateway_id, stream_id, started_at)
);

CREATE INDEX IF NOT EXISTS stream_gaps_open ON stream_gaps (stream_id) WHERE ended_at IS NULL;
