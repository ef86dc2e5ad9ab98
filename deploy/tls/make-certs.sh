#!/bin/sh
# Makes a throwaway CA and the certificates of the TLS demo stack (deploy/compose.tls.yml):
#   ca.crt            the CA pgpulse (sslrootcert) and Prometheus (tls_config.ca_file) trust
#   postgres.crt/key  PostgreSQL's server certificate, names: postgres, localhost
#   pgpulse.crt/key   the HTTPS certificate of /metrics, names: pgpulse, localhost
# Usage: deploy/tls/make-certs.sh [DIR]   (default: the directory of this script)
# For production, use certificates from your own CA; these are for the demo and for tests.
set -eu
dir=${1:-$(dirname "$0")}
mkdir -p "$dir"
cd "$dir"
days=825
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=pgpulse demo CA" -keyout ca.key -out ca.crt 2>/dev/null
for name in postgres pgpulse; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:localhost\nextendedKeyUsage=serverAuth\n' "$name" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
done
rm -f ca.srl
chmod 0600 ca.key postgres.key
# Demo only: the pgpulse container runs as uid 10001 and must read its key. In production, mount
# the key as a secret readable by that user alone.
chmod 0644 pgpulse.key
echo "certificates written to $dir: ca.crt postgres.crt/key pgpulse.crt/key"
