#!/bin/bash
# Writes the Erlang cookie shared by the nodes of a cluster (from $ERLANG_COOKIE), then hands
# over to the image's own entrypoint, which gives the file to the rabbitmq user and drops root.
set -euo pipefail
if [ -n "${ERLANG_COOKIE:-}" ]; then
    (umask 077 && printf '%s' "$ERLANG_COOKIE" > /var/lib/rabbitmq/.erlang.cookie)
fi
exec docker-entrypoint.sh "$@"
