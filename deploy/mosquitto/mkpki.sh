#!/usr/bin/env bash
# Make a local TEST PKI and password file for deploy/mosquitto/mosquitto.conf (openssl, mosquitto_passwd).
#
#   deploy/mosquitto/mkpki.sh OUTDIR [CLIENT ...]
#
# OUTDIR receives: ca.crt ca.key (the test CA), server.crt server.key (SAN: localhost, 127.0.0.1,
# ::1, $(hostname) and $MKPKI_SERVER_NAMES), and for each CLIENT (default: the ACL's users operator
# monitor homeassistant, and devices dev1 dev2) <name>.crt <name>.key (CN = name) and <name>.password
# (random), plus `passwd` (hashed, for mosquitto's password_file) and a copy of the ACL. Re-running
# keeps the CA and existing clients and adds missing ones. Keys are EC P-256, certificates valid
# $MKPKI_DAYS days (default 825).
# For tests and labs only: a fleet's CA key belongs offline, not beside the broker.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: mkpki.sh OUTDIR [CLIENT ...]}
shift
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(operator monitor homeassistant dev1 dev2)
days=${MKPKI_DAYS:-825}
mkdir -p "$out"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f "$out/ca.crt" ]; then
  key "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/CN=digit-agent test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"
fi

# sign NAME EXTFILE: a CSR for CN=NAME signed by the CA with the extensions in EXTFILE.
sign() {
  local name=$1 ext=$2
  key "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "/CN=$name" -out "$out/$name.csr"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$ext" -out "$out/$name.crt" 2>/dev/null
  rm -f "$out/$name.csr"
}

ext=$(mktemp)
trap 'rm -f "$ext"' EXIT
if [ ! -f "$out/server.crt" ]; then
  san="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:$(hostname)"
  for n in ${MKPKI_SERVER_NAMES:-}; do san="$san,DNS:$n"; done
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
    "$san" >"$ext"
  sign server "$ext"
fi

printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' >"$ext"
touch "$out/passwd"
for c in "${clients[@]}"; do
  case $c in *[!A-Za-z0-9_.-]*|"") echo "mkpki: bad client name '$c'" >&2; exit 2 ;; esac
  [ -f "$out/$c.crt" ] || sign "$c" "$ext"
  if [ ! -f "$out/$c.password" ]; then
    openssl rand -hex 16 >"$out/$c.password"
    mosquitto_passwd -b "$out/passwd" "$c" "$(cat "$out/$c.password")"
  fi
done
cp "$here/acl" "$out/acl"
# mosquitto drops privileges: let it (and the test user) read what the broker needs.
chmod 0644 "$out/ca.crt" "$out/server.crt" "$out/acl" "$out/passwd"
chmod 0644 "$out/server.key"
echo "mkpki: test PKI in $out (clients: ${clients[*]})" >&2
