#!/usr/bin/env bash
# Creates a self-signed TLS certificate for the compose stack's nginx
# (deploy/compose/tls/tls.crt and tls.key, valid for localhost and 127.0.0.1).
# Development only: in production, use your CA's or ACME certificates.
# Usage: deploy/compose/dev-cert.sh [OUTPUT_DIR]
set -euo pipefail
out=${1:-"$(cd "$(dirname "$0")" && pwd)/tls"}
mkdir -p "$out"
if [[ -s "$out/tls.crt" && -s "$out/tls.key" ]]; then
    echo "dev-cert: $out/tls.crt exists, keeping it"
    exit 0
fi
openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$out/tls.key" -out "$out/tls.crt" 2>/dev/null
# nginx's master reads the key as root before dropping privileges.
chmod 600 "$out/tls.key"
echo "dev-cert: wrote $out/tls.crt and $out/tls.key"
