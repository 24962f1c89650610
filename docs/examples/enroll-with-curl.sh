#!/usr/bin/env bash
# Enrolls a device with a Hearth hub using only curl and openssl (EST, RFC 7030).
# Usage: enroll-with-curl.sh HOST PORT CA_SHA256 TOKEN [DIR]
# The values come from the hearth://pair?host=..&port=..&ca=..&token=.. URI
# that `hearth pair` prints. Writes DIR/device.key (made here, never sent),
# DIR/device.pem, DIR/ca.pem, and prints the device id.
set -euo pipefail
host=$1 port=$2 ca_sha256=$3 token=$4 dir=${5:-device}
case $host in *:*) host="[$host]" ;; esac
est="https://$host:$port/.well-known/est"
umask 077
mkdir -p "$dir"
cd "$dir"

# 1. The hub CA. This first request cannot verify the server yet (-k), so
#    nothing secret goes on it; the answer is believed only if it matches
#    the fingerprint from the pairing URI.
curl -sS --fail -k "$est/cacerts" | base64 -d |
    openssl pkcs7 -inform DER -print_certs -out ca.pem
got=$(openssl x509 -in ca.pem -outform DER | sha256sum | cut -d' ' -f1)
if [ "$got" != "$ca_sha256" ]; then
    echo "the hub CA ($got) is not the one in the pairing URI; stopping" >&2
    exit 1
fi

# 2. The key, made here, and a PKCS#10 request signed with it. The hub
#    ignores the subject: it decides what the certificate says.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out device.key
openssl req -new -key device.key -subj "/CN=device" -outform DER | base64 -w0 >request.b64

# 3. Enroll: the one-time token is the HTTP Basic password; the server is
#    now verified against the pinned CA.
curl -sS --fail-with-body --cacert ca.pem --user "device:$token" \
    -H "Content-Type: application/pkcs10" -H "Content-Transfer-Encoding: base64" \
    --data-binary @request.b64 "$est/simpleenroll" | base64 -d |
    openssl pkcs7 -inform DER -print_certs -out device.pem
rm -f request.b64

# 4. The device id is in the certificate: its MQTT client id and topic prefix.
openssl x509 -in device.pem -noout -ext subjectAltName |
    grep -o 'urn:hearth:device:[0-9a-z]*' | cut -d: -f4
