#!/usr/bin/env bash
# Make the Dockerfile's base image (python:3.11-slim) available to the local Docker engine.
#
#   deploy/base-image.sh            reuse the image if the engine has it, else pull it, else build it
#
# Where no registry is reachable the base is built from Debian's own packages: debootstrap a
# minimal bookworm (its python3 is 3.11), add python3-venv, make `python` point at python3 and
# `docker import` the tree under the Dockerfile's base tag. The machine's CA certificates go in
# too (and PIP_CERT points pip at them), so pip inside the build trusts an HTTPS proxy that
# re-signs traffic. The engine keeps the image, so this runs once per machine.
set -euo pipefail

BASE=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$(dirname "$0")/Dockerfile" | head -n 1)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "base image $BASE: present"
    exit 0
fi
# Ask the registry first (a second): an offline `docker pull` only gives up after its own retries.
registry_answers() {
    command -v curl >/dev/null || return 0  # cannot tell: let the pull find out
    curl -s -m 10 -o /dev/null https://registry-1.docker.io/v2/  # any HTTP answer (401) will do
}
if registry_answers && timeout 600 docker pull -q "$BASE" >/dev/null 2>&1; then
    echo "base image $BASE: pulled"
    exit 0
fi
echo "base image $BASE: no registry reachable; building it from Debian bookworm (a few minutes, once)"

if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
root=$(mktemp -d /var/tmp/orchestrator-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -n 20 "$root.log"; exit 1; }
rm -f "$root.log"
ln -sf python3 "$root/usr/bin/python"
# The host's CAs (a re-signing proxy's among them), in the place Debian's tools look.
if [ -d /usr/local/share/ca-certificates ]; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$BASE" >/dev/null
echo "base image $BASE: built ($(docker image inspect -f '{{.Size}}' "$BASE" | numfmt --to=iec))"
