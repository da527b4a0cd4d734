#!/usr/bin/env bash
# Provision one environment's upstream users in the official postgres image
# (run once from /docker-entrypoint-initdb.d, as the superuser, on an empty
# data directory). Mirrors what `tierwarden quickstart` provisions:
#   tw_<env>_owner  owns the database and schema public (ddl: levels migrate,
#                   and rw outside production);
#   tw_<env>_rw     DML only (only when TW_RW_PASSWORD[_FILE] is given);
#   tw_<env>_ro     SELECT only;
# default privileges make later objects of the owner readable/writable by
# them, and the database comment carries the identity marker
# tierwarden:env=<env> (checked by `tierwarden check` with verify_marker).
#
# Inputs (environment): TW_ENV, POSTGRES_DB, and for each of OWNER, RW, RO
# either TW_<X>_PASSWORD or TW_<X>_PASSWORD_FILE. Passwords are passed to
# psql as variables, never spliced into SQL text.
set -euo pipefail

secret() { # secret NAME -> value of $NAME, or the first line of ${NAME}_FILE
    local var="$1" file_var="${1}_FILE"
    if [ -n "${!var:-}" ]; then
        printf '%s' "${!var}"
    elif [ -n "${!file_var:-}" ]; then
        head -n1 "${!file_var}" | tr -d '\r\n'
    fi
}

: "${TW_ENV:?set TW_ENV (the tierwarden environment name)}"
: "${POSTGRES_DB:?set POSTGRES_DB}"
owner_pw="$(secret TW_OWNER_PASSWORD)"
ro_pw="$(secret TW_RO_PASSWORD)"
rw_pw="$(secret TW_RW_PASSWORD)"
[ -n "$owner_pw" ] || { echo "init-upstream: TW_OWNER_PASSWORD[_FILE] is required" >&2; exit 1; }
[ -n "$ro_pw" ] || { echo "init-upstream: TW_RO_PASSWORD[_FILE] is required" >&2; exit 1; }

owner="tw_${TW_ENV}_owner"
ro="tw_${TW_ENV}_ro"
rw="tw_${TW_ENV}_rw"
# Without a separate rw user (development tiers), the owner serves rw.
[ -n "$rw_pw" ] || rw="$owner"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$POSTGRES_DB" -v owner="$owner" -v ro="$ro" -v rw="$rw" \
    -v owner_pw="$owner_pw" -v ro_pw="$ro_pw" -v rw_pw="$rw_pw" \
    -v marker="tierwarden:env=${TW_ENV}" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_pw';
CREATE ROLE :"ro" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'ro_pw';
SELECT :'rw' <> :'owner' AS separate_rw \gset
\if :separate_rw
CREATE ROLE :"rw" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'rw_pw';
\endif
ALTER DATABASE :"db" OWNER TO :"owner";
COMMENT ON DATABASE :"db" IS :'marker';
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"rw", :"ro";
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"rw", :"ro";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT USAGE ON SCHEMAS TO :"rw", :"ro";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO :"rw";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO :"rw";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT SELECT ON TABLES TO :"ro";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT SELECT ON SEQUENCES TO :"ro";
SQL
echo "init-upstream: environment ${TW_ENV}: users ${owner}, ${rw}, ${ro} ready"
