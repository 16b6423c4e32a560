-- Roles of the local deployment: one per process, each with the least rights it needs
-- (the migrations grant them their tables). Safe to re-run.
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['gw_authz', 'gw_auditor', 'gw_compliance', 'gw_backup'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I LOGIN', r);
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE gateway TO %I', r);
  END LOOP;
END $$;
GRANT pg_read_all_data TO gw_backup;
