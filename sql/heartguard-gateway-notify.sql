-- heartguard-gateway: change notifications for binding sync.
--
-- Install once on the central HeartGuard database, as a role that may create functions
-- and triggers on the tables below (the gateways themselves only need SELECT):
--
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f heartguard-gateway-notify.sql
--
-- It is idempotent (safe to run again, e.g. after an upgrade) and does not change the
-- definition of any platform table: it adds one function and statement-level triggers
-- that call pg_notify('heartguard_bindings', <table name>) after every change that can
-- alter a binding. Gateways LISTEN on that channel and reload their scope within a
-- second; the payload only says "something changed", never what (no personal data).
--
-- To remove: DROP FUNCTION heartguard_gateway_notify() CASCADE;

CREATE OR REPLACE FUNCTION heartguard_gateway_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('heartguard_bindings', TG_TABLE_NAME);
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS heartguard_gateway_notify ON devices;
CREATE TRIGGER heartguard_gateway_notify
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices
  FOR EACH STATEMENT EXECUTE FUNCTION heartguard_gateway_notify();

DROP TRIGGER IF EXISTS heartguard_gateway_notify ON signal_streams;
CREATE TRIGGER heartguard_gateway_notify
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signal_streams
  FOR EACH STATEMENT EXECUTE FUNCTION heartguard_gateway_notify();

DROP TRIGGER IF EXISTS heartguard_gateway_notify ON timeseries_binding;
CREATE TRIGGER heartguard_gateway_notify
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON timeseries_binding
  FOR EACH STATEMENT EXECUTE FUNCTION heartguard_gateway_notify();

DROP TRIGGER IF EXISTS heartguard_gateway_notify ON timeseries_binding_tag;
CREATE TRIGGER heartguard_gateway_notify
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON timeseries_binding_tag
  FOR EACH STATEMENT EXECUTE FUNCTION heartguard_gateway_notify();

DROP TRIGGER IF EXISTS heartguard_gateway_notify ON signal_types;
CREATE TRIGGER heartguard_gateway_notify
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON signal_types
  FOR EACH STATEMENT EXECUTE FUNCTION heartguard_gateway_notify();

-- Only a patient's organization matters to a gateway (the org_id tag).
DROP TRIGGER IF EXISTS heartguard_gateway_notify ON patients;
CREATE TRIGGER heartguard_gateway_notify
  AFTER UPDATE OF org_id ON patients
  FOR EACH STATEMENT EXECUTE FUNCTION heartguard_gateway_notify();
