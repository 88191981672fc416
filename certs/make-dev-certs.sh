#!/usr/bin/env bash
# Makes a local development CA and, signed by it, a server certificate for localhost /
# 127.0.0.1 / ::1 (dev.crt, dev.key) and a partner client certificate (client-acme.crt,
# client-acme.key, subject CN=acme-erp,O=ACME Manufacturing) for trying client-certificate
# authentication. Existing files are kept; pass --force to make new ones.
# Generated keys and certificates are git-ignored: never use them outside development.
set -euo pipefail
cd "$(dirname "$0")"

if [[ "${1:-}" != "--force" && -f dev.crt && -f dev.key && -f ca.crt ]]; then
  echo "certs: dev certificates already exist (use --force to replace them)"
  exit 0
fi
command -v openssl >/dev/null || { echo "certs: openssl is required (apt-get install openssl)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
  -subj "/CN=Sluice Dev CA" -keyout ca.key -out ca.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout dev.key -out "$work/dev.csr" 2>/dev/null
cat > "$work/server.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$work/dev.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile "$work/server.ext" -out dev.crt 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=ACME Manufacturing/CN=acme-erp" \
  -keyout client-acme.key -out "$work/client.csr" 2>/dev/null
cat > "$work/client.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EXT
openssl x509 -req -in "$work/client.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile "$work/client.ext" -out client-acme.crt 2>/dev/null

rm -f ca.srl
chmod 600 ./*.key
echo "certs: made ca.crt, dev.crt/dev.key (localhost, 127.0.0.1, ::1) and client-acme.crt/client-acme.key in $(pwd)"
