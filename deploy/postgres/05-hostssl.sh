#!/bin/sh
# TLS demo stack only (deploy/compose.tls.yml): TCP logins must use TLS. The postgres image
# ends pg_hba.conf with `host all all all scram-sha-256`; this turns it into the line to add
# on any server whose clients must encrypt:
#   hostssl all all all scram-sha-256
# (`hostssl ... clientcert=verify-full` also demands a client certificate.)
sed -i 's/^host all all all /hostssl all all all /' "$PGDATA/pg_hba.conf"
