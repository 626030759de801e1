-- The logins PostgreSQL hands out, applied by the `roles` sidecar (statefulset.yaml) as the
-- superuser on every start of the pod, so it is idempotent: a fresh volume, a volume that an
-- older kdflow initialised (MLflow's tables owned by the superuser) and a changed password in
-- a Secret all end in the same state.
--   MLFLOW_DB_USER  (Secret postgres-mlflow): owns database POSTGRES_DB and every object in it;
--                   LOGIN, NOSUPERUSER, NOCREATEDB, NOCREATEROLE. MLflow connects as it.
--   BACKUP_DB_USER  (Secret postgres-backup): reads every table of POSTGRES_DB (pg_read_all_data),
--                   writes nothing. The backup CronJob (../backup/) runs pg_dump as it.
-- Values come from the environment (\getenv), never from psql's command line (`ps`).
\set ON_ERROR_STOP on
\set superuser ''
\set db ''
\set mlflow_user ''
\set mlflow_password ''
\set backup_user ''
\set backup_password ''
\getenv superuser POSTGRES_USER
\getenv db POSTGRES_DB
\getenv mlflow_user MLFLOW_DB_USER
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv backup_user BACKUP_DB_USER
\getenv backup_password BACKUP_DB_PASSWORD
-- Quiet on a rerun ("role ... is already a member"); warnings and errors still show.
SET client_min_messages TO warning;

-- !!! Neither login may be the superuser: an older kdflow's bootstrap told you to name the
-- superuser `mlflow`, and demoting it would leave the server without one. Such a cluster names
-- MLflow's login differently (e.g. mlflow_app) in Secret postgres-mlflow.
SELECT :'db' <> '' AND :'superuser' <> ''
   AND :'mlflow_user' <> '' AND :'mlflow_password' <> ''
   AND :'backup_user' <> '' AND :'backup_password' <> ''
   AND :'mlflow_user' <> :'superuser' AND :'backup_user' <> :'superuser'
   AND :'mlflow_user' <> :'backup_user'
   AND NOT EXISTS (SELECT FROM pg_roles
                   WHERE rolname IN (:'mlflow_user', :'backup_user')
                     AND oid = 10) AS logins_ok \gset
\if :logins_ok
\else
\warn 'kdflow: Secrets postgres-mlflow and postgres-backup each need POSTGRES_USER and POSTGRES_PASSWORD, with two names unlike each other and unlike the superuser of postgres-credentials'
DO $$ BEGIN RAISE EXCEPTION 'kdflow: refusing these logins (see the line above)'; END $$;
\endif

-- CREATE ROLE has no IF NOT EXISTS; ALTER ROLE then sets every attribute, on old roles too.
SELECT format('CREATE ROLE %I', :'mlflow_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'mlflow_user') \gexec
ALTER ROLE :"mlflow_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS PASSWORD :'mlflow_password';

SELECT format('CREATE ROLE %I', :'backup_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'backup_user') \gexec
ALTER ROLE :"backup_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS PASSWORD :'backup_password';
ALTER ROLE :"backup_user" SET default_transaction_read_only = on;
GRANT pg_read_all_data TO :"backup_user";

-- The entrypoint creates POSTGRES_DB on a fresh volume, owned by the superuser: hand it over.
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'mlflow_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO :"mlflow_user";
-- Only its owner (and the superuser) may connect, and the backup login.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"backup_user";

-- Objects made before this existed (MLflow migrated as the superuser) go to MLflow's login, or
-- its next migration could not alter them. Schema `public` follows the database's owner.
\connect :"db"
SELECT set_config('kdflow.owner', :'mlflow_user', false) \gset kdflow_
DO $$
DECLARE
  new_owner text := current_setting('kdflow.owner');
  obj record;
BEGIN
  FOR obj IN
    SELECT c.oid::regclass AS name,
           CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                          WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                          ELSE 'TABLE' END AS kind
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
       AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND c.relowner <> new_owner::regrole
       -- a serial or identity sequence moves with its table; extension objects stay
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND (d.deptype = 'e'
                               OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
     ORDER BY c.relkind = 'S'
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I', obj.kind, obj.name, new_owner);
  END LOOP;
  FOR obj IN
    SELECT t.oid::regtype AS name, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END AS kind
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
       AND t.typtype IN ('e', 'd', 'r')
       AND t.typowner <> new_owner::regrole
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                          AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I', obj.kind, obj.name, new_owner);
  END LOOP;
END
$$;
