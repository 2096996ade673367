#!/usr/bin/env bash
# Build the container image and run it through its paces (`make image`; .ci/run runs it after
# `make test`):
#   - a Docker engine: the running one, else dockerd started here (no iptables, no bridge: every
#     container uses --network host, loopback only) and stopped again at the end;
#   - the base image: deploy/base-image.sh (kept by the engine; built from Debian offline);
#   - deploy/Dockerfile built (the project installed from a wheel, not editable);
#   - checks: non-root UID; check-config (and its one-line refusal of a secret the service user
#     cannot read); the daemon healthy by HEALTHCHECK; a read-only root; SIGTERM with a job in
#     flight drains and exits 0 within the grace period; `run --once` against the simulator on
#     the host's loopback, ledger and results in the volume; compose.yaml validated and brought
#     up once.
# Exit 0: all passed. Exit 77: skipped, no Docker engine can run here (said why). Else: failed.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP=77
GRACE=60
IMAGE=${ORCHESTRATOR_TEST_IMAGE:-orchestrator:test}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
started=$(date +%s)
say() { printf '[test-image %3ss] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

work=$(mktemp -d /tmp/orchestrator-image-test.XXXXXX)
tag=oit$$
volume=$tag-state
dockerd_pid="" sim_pid="" compose="" files=()
cleanup() {
    set +e
    docker rm -f "$tag-daemon" >/dev/null 2>&1
    [ -n "${compose:-}" ] && $compose "${files[@]}" down -v >/dev/null 2>&1
    docker volume rm -f "$volume" >/dev/null 2>&1
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# --- the engine -------------------------------------------------------------------------------
start_engine() {
    if ! command -v docker >/dev/null; then
        say "SKIPPED: no docker client installed (apt-get install docker.io)"; exit $SKIP
    fi
    docker info >/dev/null 2>&1 && return 0
    if ! command -v dockerd >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "installing docker.io (dockerd)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1 || true
        fi
        command -v dockerd >/dev/null || { say "SKIPPED: no Docker engine (dockerd) here"; exit $SKIP; }
    fi
    [ "$(id -u)" = 0 ] || { say "SKIPPED: no engine runs and starting dockerd needs root"; exit $SKIP; }
    say "starting dockerd (--iptables=false --bridge=none --ip-masq=false)"
    dockerd --iptables=false --bridge=none --ip-masq=false >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 5 "$work/dockerd.log"
    say "SKIPPED: dockerd did not start here"; dockerd_pid=""; exit $SKIP
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local until=$(($(date +%s) + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$until" ] || fail "timed out waiting for $what"
        sleep 0.5
    done
}

start_engine
deploy/base-image.sh | sed 's/^/  /'

say "building deploy/Dockerfile as $IMAGE"
build_started=$(date +%s)
docker build -q --network host -f deploy/Dockerfile -t "$IMAGE" . >"$work/build.log" 2>&1 \
    || { tail -n 30 "$work/build.log"; fail "docker build"; }
say "built in $(($(date +%s) - build_started)) s"

# --- what the container gets: a config, a secret the service user can read, a volume -------------
sim_port=$(free_port)
web_port=$(free_port)
"$PY" -m orchestrator simulate --port "$sim_port" --duration 6 >"$work/sim.log" 2>&1 &
sim_pid=$!
wait_for 20 "the simulator" "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$sim_port/clari/v4/_sim/stats')"

cat >"$work/orchestrator.toml" <<EOF
[ledger]
url = "sqlite+aiosqlite:////var/lib/orchestrator/ledger.db"
[output]
dir = "/var/lib/orchestrator/results"
[web]
host = "127.0.0.1"
port = $web_port
[daemon]
drain_timeout = "20s"
retry_base = "1s"
claim_interval = "0.2s"
[providers.clari]
base_url = "http://127.0.0.1:$sim_port/clari/v4"
api_key_file = "/run/secrets/clari"
poll = { initial = "0.2s", max_interval = "1s" }
[[pipelines]]
name = "forecast"
kind = "clari.forecast_export"
schedule = "0 6 * * MON"
params = { forecastId = "forecast_x", timePeriod = "2026_Q4", exportFormat = "CSV" }
EOF
chmod 0644 "$work/orchestrator.toml"
mkdir -p "$work/secrets" "$work/root-secrets"
printf 'image-test-key\n' >"$work/secrets/clari"
cp "$work/secrets/clari" "$work/root-secrets/clari"
# As the README says: the secret owned by the service user (UID 10001), readable by it alone.
chown 10001:10001 "$work/secrets/clari" && chmod 0400 "$work/secrets/clari"
chown 0:0 "$work/root-secrets/clari" && chmod 0600 "$work/root-secrets/clari"
docker volume create "$volume" >/dev/null

run_args=(--network host --read-only --tmpfs /tmp --cap-drop ALL
    --security-opt no-new-privileges
    -v "$volume:/var/lib/orchestrator")
config=(-v "$work/orchestrator.toml:/etc/orchestrator/orchestrator.toml:ro")
secret=(-v "$work/secrets/clari:/run/secrets/clari:ro")
in_container() { docker run --rm "${run_args[@]}" "${config[@]}" "${secret[@]}" "$IMAGE" "$@"; }

# --- the checks -------------------------------------------------------------------------------
uid=$(docker run --rm --entrypoint id "$IMAGE" -u)
[ "$uid" = 10001 ] || fail "the image runs as UID $uid, not 10001"
say "ok: runs as UID 10001"

out=$(docker run --rm "${run_args[@]}" "${config[@]}" \
    -v "$work/root-secrets/clari:/run/secrets/clari:ro" "$IMAGE" check-config 2>&1) && fail "check-config passed with an unreadable secret: $out"
grep -q "api_key_file: cannot read /run/secrets/clari: Permission denied" <<<"$out" \
    || fail "check-config on an unreadable secret said: $out"
grep -q Traceback <<<"$out" && fail "check-config printed a traceback: $out"
say "ok: a root-only secret is refused in one line: ${out##*/orchestrator.toml:}"

out=$(in_container check-config 2>&1) || fail "check-config: $out"
say "ok: check-config: $out"

# As UID 10001 on a read-only root: an output directory it cannot create is named, before `run`.
sed 's#^dir = .*#dir = "/opt/results"#' "$work/orchestrator.toml" >"$work/unwritable.toml"
chmod 0644 "$work/unwritable.toml"
for command in check-config run; do
    out=$(docker run --rm "${run_args[@]}" "${secret[@]}" \
        -v "$work/unwritable.toml:/etc/orchestrator/orchestrator.toml:ro" "$IMAGE" $command 2>&1) \
        && fail "$command passed with an unwritable output dir: $out"
    grep -q "output.dir: /opt/results cannot be created: /opt is not writable by uid 10001" <<<"$out" \
        || fail "$command on an unwritable output dir said: $out"
done
say "ok: an output dir UID 10001 cannot create stops check-config and run: ${out##*output.dir: }"

docker run -d --name "$tag-daemon" "${run_args[@]}" "${config[@]}" "${secret[@]}" \
    --health-interval 1s --health-start-period 30s --stop-timeout "$GRACE" "$IMAGE" run >/dev/null
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$tag-daemon")" = healthy ]; }
wait_for 60 "HEALTHCHECK healthy" healthy
say "ok: HEALTHCHECK reports healthy"

docker exec "$tag-daemon" sh -c 'touch /opt/orchestrator/probe' 2>/dev/null \
    && fail "the root filesystem is writable"
docker exec "$tag-daemon" sh -c 'touch /var/lib/orchestrator/.probe && rm /var/lib/orchestrator/.probe' \
    || fail "the state volume is not writable by the service user"
say "ok: read-only root, writable state volume"

docker exec "$tag-daemon" orchestrator trigger forecast >/dev/null
running() { docker exec "$tag-daemon" orchestrator jobs list --state RUNNING --json | grep -q '"id"'; }
wait_for 30 "the triggered job to run remotely" running
stop_started=$(date +%s)
docker stop -t "$GRACE" "$tag-daemon" >/dev/null
stop_took=$(($(date +%s) - stop_started))
code=$(docker inspect -f '{{.State.ExitCode}}' "$tag-daemon")
[ "$code" = 0 ] || { docker logs --tail 20 "$tag-daemon"; fail "SIGTERM: exit $code"; }
[ "$stop_took" -lt "$GRACE" ] || fail "SIGTERM: took ${stop_took}s, the grace period is ${GRACE}s"
docker logs "$tag-daemon" 2>&1 | grep -q daemon_stopped || fail "no daemon_stopped line in the log"
say "ok: SIGTERM with a job in flight: drained, exit 0 in ${stop_took}s (grace ${GRACE}s)"

out=$(in_container run --once 2>&1) || { tail -n 20 <<<"$out"; fail "run --once"; }
jobs=$(in_container jobs list --json)
"$PY" - "$jobs" <<'EOF' || fail "jobs after run --once: $jobs"
import json, sys
jobs = json.loads(sys.argv[1])
assert len(jobs) == 2, jobs  # the one interrupted by SIGTERM (resumed) and the --once run
for j in jobs:
    assert j["state"] == "SUCCEEDED", j
    assert j["result_path"].startswith("/var/lib/orchestrator/results/forecast/"), j
    assert j["result_bytes"] > 0, j
EOF
docker run --rm -v "$volume:/var/lib/orchestrator" --entrypoint sh "$IMAGE" -c \
    'test -s /var/lib/orchestrator/ledger.db && ls /var/lib/orchestrator/results/forecast/*.csv' \
    >/dev/null || fail "ledger or results are not in the volume"
say "ok: run --once against the simulator: 2 jobs SUCCEEDED, ledger and results in the volume"

# --- compose ----------------------------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
    compose="docker compose"
elif command -v docker-compose >/dev/null; then
    compose="docker-compose"
    say "note: the compose plugin (docker compose) is not installed; using $(docker-compose version --short 2>/dev/null || echo docker-compose) instead"
fi
if [ -z "$compose" ]; then
    say "SKIPPED compose: neither the compose plugin (docker compose) nor docker-compose is installed"
else
    # The real file, with this test's config, secret, image and host network laid over it.
    cat >"$work/compose.test.yaml" <<EOF
services:
  orchestrator:
    image: $IMAGE
    network_mode: host
    healthcheck:                  # the image's own check, asked every 2 s instead of 30 s
      interval: 2s
    volumes:
      - type: bind
        source: $work/orchestrator.toml
        target: /etc/orchestrator/orchestrator.toml
        read_only: true
secrets:
  clari:
    file: $work/secrets/clari
EOF
    files=(-p "$tag" -f deploy/compose.yaml -f "$work/compose.test.yaml")
    $compose "${files[@]}" config -q || fail "compose config"
    say "ok: $compose config"
    # Host networking (this engine has no bridge NAT) takes no published ports: the plugin drops
    # them with `!reset`; docker-compose 1.x cannot, so it runs the merged file without them.
    if [ "$compose" = "docker compose" ]; then
        printf '    ports: !reset []\n' >>"$work/compose.test.yaml"
    else
        $compose "${files[@]}" config >"$work/compose.merged.yaml"
        "$(sed -n '1s/^#!//p' "$(command -v docker-compose)")" - "$work/compose.merged.yaml" <<'PY'
import sys, yaml
path = sys.argv[1]
doc = yaml.safe_load(open(path))
doc["services"]["orchestrator"].pop("ports", None)
yaml.safe_dump(doc, open(path, "w"))
PY
        files=(-p "$tag" -f "$work/compose.merged.yaml")
    fi
    $compose "${files[@]}" up -d --no-build >"$work/compose.log" 2>&1 \
        || { cat "$work/compose.log"; fail "compose up"; }
    cid=$($compose "${files[@]}" ps -q orchestrator)
    c_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$cid")" = healthy ]; }
    wait_for 90 "the compose service healthy" c_healthy
    [ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Init}}' "$cid")" = "true true" ] \
        || fail "compose: the service is not read-only with an init"
    $compose "${files[@]}" down -v >/dev/null 2>&1 || fail "compose down"
    say "ok: $compose up: healthy, read-only, init; down"
    # A missing config file stops `up` with a clear error; no directory appears in its place.
    last=${files[-1]}
    sed "s#$work/orchestrator.toml#$work/missing.toml#" "$last" >"$work/compose.missing.yaml"
    files[-1]=$work/compose.missing.yaml
    out=$($compose "${files[@]}" up -d --no-build 2>&1) && fail "compose up without a config file started"
    grep -q "does not exist" <<<"$out" || fail "compose up without a config file said: $out"
    [ ! -e "$work/missing.toml" ] || fail "compose created $work/missing.toml"
    say "ok: $compose up without the config file: refused ($(grep -m1 -o 'bind source path.*' <<<"$out"))"
fi

say "PASSED in $(($(date +%s) - started)) s"
