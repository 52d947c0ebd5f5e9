#!/usr/bin/env bash
# test certificates: a CA, a server certificate for 127.0.0.1 and a client
# certificate, all signed by the CA. usage: make_certs.sh <dir>
set -euo pipefail
d=$1
mkdir -p "$d"
cd "$d"
q() { openssl "$@" >/dev/null 2>&1; }
q req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=commerce test ca" -keyout ca.key -out ca.pem
q req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
q x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
q req -newkey rsa:2048 -nodes -subj "/CN=commerce test client" -keyout client.key -out client.csr
q x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem
