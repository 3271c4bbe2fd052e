#!/usr/bin/env bash
# The whole check, as CI runs it (.ci/run): install the peers the tests need,
# start them on loopback, then fmt, clippy, the tests, and the release build.
#
# Runs as root on a fresh Debian machine with python3, pip and the Rust
# toolchain; re-runs skip what is already installed. Add a step by writing a
# function and calling it from main().
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/tests/.peers"          # peer state and logs (git-ignored)
MOTO_VERSION="5.2.1"
# Helm's engine (Helm 4's Go library) for the chart checks. It declares
# Python >= 3.12 but works on 3.11, hence --ignore-requires-python.
HELM_SDKPY_VERSION="0.1.32"
REGISTRY_USER="regbridge"
REGISTRY_PASSWORD="regbridge-e2e-$RANDOM$RANDOM"
# Other builds may share this machine's target dir; take turns with them.
CARGO_LOCK="${CARGO_LOCK:-/tmp/cargo.lock}"
# One clean build per CI run: incremental artifacts would only cost time and
# disk (tens of GB over a day of local runs).
export CARGO_INCREMENTAL=0

PIDS=()

# Each step's line carries the time since the start, so a slow CI run shows
# where its minutes went.
log() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

cargo_() {
  if command -v flock >/dev/null; then
    flock "$CARGO_LOCK" cargo "$@"
  else
    cargo "$@"
  fi
}

stop_peers() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}

install_packages() {
  local missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null || missing+=(util-linux)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

install_moto() {
  if python3 -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null \
    && python3 -c "import flask, werkzeug" 2>/dev/null; then
    return
  fi
  log "pip install moto[server]==$MOTO_VERSION"
  python3 -m pip install -q "moto[server]==$MOTO_VERSION"
}

# PyYAML reads YAML as kubectl and Helm do (YAML 1.1): tests/yaml11.py.
install_pyyaml() {
  python3 -c "import yaml" 2>/dev/null && return
  log "pip install pyyaml"
  python3 -m pip install -q pyyaml
}

install_helm_sdkpy() {
  if python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('helm-sdkpy') != '$HELM_SDKPY_VERSION')" 2>/dev/null; then
    return
  fi
  log "pip install helm-sdkpy==$HELM_SDKPY_VERSION"
  python3 -m pip install -q --ignore-requires-python "helm-sdkpy==$HELM_SDKPY_VERSION"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for NAME URL LOG: until URL answers with any HTTP status, for up to 60 s.
wait_for() {
  local name="$1" url="$2" logfile="$3" i
  for i in $(seq 1 120); do
    # shellcheck disable=SC2086 # the URL may carry curl options (--cacert)
    if curl -s -o /dev/null $url; then
      return
    fi
    sleep 0.5
  done
  echo "$name did not answer at $url; its log:" >&2
  cat "$logfile" >&2 || true
  exit 1
}

start_moto() {
  local port
  port="$(free_port)"
  python3 -m moto.server -H 127.0.0.1 -p "$port" >"$PEERS/moto.log" 2>&1 &
  PIDS+=("$!")
  wait_for moto_server "http://127.0.0.1:$port/moto-api/" "$PEERS/moto.log"
  export REGBRIDGE_MOTO_URL="http://127.0.0.1:$port"
  log "moto_server $MOTO_VERSION at $REGBRIDGE_MOTO_URL"
}

# serve_registry NAME DIR PORT [TLS_DIR [AUTH]]: docker-registry on
# 127.0.0.1:PORT, storing in DIR, with the account in
# $PEERS/registry/htpasswd, or the `auth:` block AUTH when given; over HTTPS
# with TLS_DIR's server.crt and server.key (trusting TLS_DIR/ca.crt to probe
# it) when TLS_DIR is not empty.
serve_registry() {
  local name="$1" dir="$2" port="$3" tls="${4:-}" probe="http://127.0.0.1:$3/v2/"
  local auth="${5:-$(printf 'auth:\n  htpasswd:\n    realm: %s\n    path: %s' "regbridge-$1" "$PEERS/registry/htpasswd")}"
  mkdir -p "$dir/storage"
  {
    printf 'version: 0.1\nlog:\n  level: warn\n'
    printf 'storage:\n  filesystem:\n    rootdirectory: %s\n' "$dir/storage"
    printf 'http:\n  addr: 127.0.0.1:%s\n' "$port"
    if [[ -n "$tls" ]]; then
      printf '  tls:\n    certificate: %s\n    key: %s\n' "$tls/server.crt" "$tls/server.key"
      probe="https://127.0.0.1:$port/v2/ --cacert $tls/ca.crt"
    fi
    printf '%s\n' "$auth"
  } >"$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$PEERS/$name.log" 2>&1 &
  PIDS+=("$!")
  wait_for "$name" "$probe" "$PEERS/$name.log"
}

start_registry() {
  local port dir="$PEERS/registry"
  port="$(free_port)"
  rm -rf "$dir"
  mkdir -p "$dir"
  htpasswd -Bbc "$dir/htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" 2>/dev/null
  serve_registry registry "$dir" "$port"
  export REGBRIDGE_REGISTRY_URL="127.0.0.1:$port"
  export REGBRIDGE_REGISTRY_USER="$REGISTRY_USER"
  export REGBRIDGE_REGISTRY_PASSWORD="$REGISTRY_PASSWORD"
  log "docker-registry at $REGBRIDGE_REGISTRY_URL (htpasswd)"
}

# The same registry and account over HTTPS, with a certificate from a private
# CA made here: the case of on-prem Harbor, Nexus or GitLab behind a company
# CA. Nothing on this machine trusts that CA unless a test says so.
start_tls_registry() {
  local port dir="$PEERS/tls-registry"
  port="$(free_port)"
  rm -rf "$dir"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=regbridge test private CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
  serve_registry tls-registry "$dir" "$port" "$dir"
  export REGBRIDGE_TLS_REGISTRY_URL="127.0.0.1:$port"
  export REGBRIDGE_TLS_REGISTRY_CA="$dir/ca.crt"
  log "docker-registry at https://$REGBRIDGE_TLS_REGISTRY_URL (htpasswd, private CA)"
}

# A docker-registry with Docker's token authentication and no accounts of its
# own, as ACR keeps its storage behind /oauth2/token: it accepts registry
# tokens signed by a key made here (its certificate is the rootcertbundle).
# The ACR tests put their stand-in for ACR's /oauth2/exchange and
# /oauth2/token in front of it (providers/tests/common/azure.rs), which signs
# with REGBRIDGE_TOKEN_REGISTRY_KEY and rewrites the challenge to name itself,
# so the realm configured here is never shown to a client.
start_token_registry() {
  local port dir="$PEERS/token-registry" service="regbridge-token-registry"
  port="$(free_port)"
  rm -rf "$dir"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=regbridge test token issuer" \
    -keyout "$dir/token.key" -out "$dir/token.crt" 2>/dev/null
  serve_registry token-registry "$dir" "$port" "" "$(printf '%s\n' \
    'auth:' '  token:' \
    "    realm: http://127.0.0.1:$port/shown-to-nobody" \
    "    service: $service" "    issuer: $service" \
    "    rootcertbundle: $dir/token.crt")"
  export REGBRIDGE_TOKEN_REGISTRY_URL="http://127.0.0.1:$port"
  export REGBRIDGE_TOKEN_REGISTRY_KEY="$dir/token.key"
  export REGBRIDGE_TOKEN_REGISTRY_SERVICE="$service"
  export REGBRIDGE_TOKEN_REGISTRY_ISSUER="$service"
  log "docker-registry at $REGBRIDGE_TOKEN_REGISTRY_URL (token auth)"
}

check_fmt() {
  log "cargo fmt --check"
  cargo_ fmt --all --check
}

check_clippy() {
  log "cargo clippy"
  cargo_ clippy --workspace --all-targets --all-features --locked -- -D warnings
}

# Helm lint, then renders with default and non-default values into
# tests/.peers/chart/, which tests/chart.rs checks during run_tests.
check_chart() {
  log "helm lint and render (helm-sdkpy $HELM_SDKPY_VERSION)"
  rm -rf "$PEERS/chart"
  python3 "$ROOT/tests/chart_render.py" "$PEERS/chart"
  export REGBRIDGE_CHART_DIR="$PEERS/chart"
}

run_tests() {
  log "cargo test"
  export REGBRIDGE_REQUIRE_PEERS=1
  cargo_ test --workspace --all-features --locked
}

build_release() {
  log "cargo build --release"
  cargo_ build --release --locked
}

# The scale scenario measures the release binary against the API stand-in and
# prints its figures; it asserts only that the work completes and that a
# steady state makes no writes.
bench_scale() {
  log "scale benchmark (release binary)"
  REGBRIDGE_SCALE_BINARY="$ROOT/target/release/regbridge" \
    cargo_ test --workspace --all-features --locked --test scale -- --ignored --nocapture --test-threads=1
  log "webhook admission latency benchmark"
  cargo_ test --workspace --all-features --locked --test webhook -- --ignored --nocapture admission_latency_at_100_per_second
}

STEPS=(check_fmt check_clippy check_chart run_tests build_release bench_scale)

# `tests/run.sh` runs every step; `tests/run.sh run_tests` only the named ones
# (the peers are started either way).
main() {
  local steps=("$@") step
  ((${#steps[@]})) || steps=("${STEPS[@]}")
  for step in "${steps[@]}"; do
    [[ " ${STEPS[*]} " == *" $step "* ]] || { echo "unknown step $step; steps: ${STEPS[*]}" >&2; exit 2; }
  done
  cd "$ROOT"
  mkdir -p "$PEERS"
  trap stop_peers EXIT
  install_packages
  install_moto
  install_pyyaml
  install_helm_sdkpy
  start_moto
  start_registry
  start_tls_registry
  start_token_registry
  for step in "${steps[@]}"; do
    "$step"
  done
  log "passed: ${steps[*]}"
}

main "$@"
