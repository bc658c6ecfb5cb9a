#!/bin/bash
# One database per service, each owned by a login role of the same name that can reach only
# its own database. Run once by the postgres image on an empty data directory
# (/docker-entrypoint-initdb.d); the tests run it against the local server.
#   POSTGRES_DATABASES           names, space-separated, e.g. "payment points mailer audit"
#   POSTGRES_<NAME>_PASSWORD     the password of each role, e.g. POSTGRES_PAYMENT_PASSWORD
set -euo pipefail
for name in ${POSTGRES_DATABASES:?set POSTGRES_DATABASES}; do
    password_var="POSTGRES_${name^^}_PASSWORD"
    password="${!password_var:?set $password_var}"
    psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        -v name="$name" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
    echo "init-databases: database and role \"$name\" created"
done
