-- The trial's PostgreSQL database and its two roles, with least privilege (README "Deploying").
--
-- Run once, as PostgreSQL's superuser, on the database server (the passwords come from the shell,
-- never from this file):
--
--   runuser -u postgres -- psql -v ON_ERROR_STOP=1 \
--       -v owner_password="$OWNER_PASSWORD" -v app_password="$APP_PASSWORD" \
--       -f /srv/trial/config/deploy/create-database.sql
--
-- Other names: add -v db=NAME -v owner=NAME -v app=NAME (defaults: trial, trial_owner, trial_app).
--
-- * The owner role (trial_owner) owns the database and its schema: it runs the migrations
--   (`trial-owner db upgrade`, README), so it creates and alters the tables, the audit trail's triggers and
--   their function, and it takes, verifies and restores the backups (trial-backup.service; CREATEDB
--   for the scratch database of `trial backup verify`; it creates no role).
-- * The app role (trial_app) is what the web app, the worker and the timers connect as: SELECT,
--   INSERT, UPDATE and DELETE on the tables and USAGE, SELECT on the sequences, nothing else. It owns
--   no table, so it cannot DROP or ALTER one, cannot drop or disable the triggers that keep the audit
--   trail append-only (audit_record, audit_anchor, audit_seal refuse UPDATE, DELETE and TRUNCATE; it
--   has no TRUNCATE anyway), cannot create a table (no CREATE on the schema) and, not being a
--   superuser, cannot turn the triggers off with session_replication_role. At run time the app
--   needs no DDL: no temporary tables; LISTEN/NOTIFY (the bundle worker is woken by NOTIFY
--   trial_lock_build) and the session settings it makes (timeouts) need no privilege.
-- * Default privileges: every table and sequence the owner creates later (a migration) is granted to
--   the app role as it is created, so an upgrade needs no grant of its own. Migrate only as the owner:
--   a table created by another role would not be granted.

\set ON_ERROR_STOP on
\if :{?db}
\else
  \set db trial
\endif
\if :{?owner}
\else
  \set owner trial_owner
\endif
\if :{?app}
\else
  \set app trial_app
\endif
\if :{?owner_password}
\else
  \echo 'create-database.sql: give the passwords: psql -v owner_password=... -v app_password=...'
  SELECT 1/0 AS "owner_password is missing";
\endif
\if :{?app_password}
\else
  \echo 'create-database.sql: give the passwords: psql -v owner_password=... -v app_password=...'
  SELECT 1/0 AS "app_password is missing";
\endif

-- CREATEDB: `trial backup verify` restores each backup into a scratch database it creates and drops
CREATE ROLE :"owner" LOGIN CREATEDB PASSWORD :'owner_password';
CREATE ROLE :"app" LOGIN PASSWORD :'app_password';
-- UTF-8 whatever the server's locale (a minimal Debian server may have none: SQL_ASCII otherwise)
CREATE DATABASE :"db" OWNER :"owner" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";

\connect :"db"
-- the schema belongs to the owner; nobody else may create in it
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";
-- the same for what is already there (none on a new database; a database restored before this ran)
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
