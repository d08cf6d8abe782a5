# shellcheck shell=bash
# Helpers shared by scripts/build-pg-image, scripts/test and .ci/run.
# Source it; it defines functions and one variable and runs nothing.

# The PostgreSQL image the integration tests run; the Rust harness reads the
# same variable with the same default.
PGRPC_TEST_IMAGE=${PGRPC_TEST_IMAGE:-pgrpc-postgres:15}

# Every message goes to stderr, prefixed with the script's name, so that the
# output of cargo and of the scripts can be told apart in a CI log. SCRIPT_NAME,
# when set, replaces the name.
say() { printf '%s: %s\n' "${SCRIPT_NAME:-${0##*/}}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${SCRIPT_NAME:-${0##*/}}" "$*" >&2; exit 1; }

# A banner for one phase of a long run (.ci/run).
section() { printf '\n==> %s\n' "$*" >&2; }

# Seconds elapsed since the given `date +%s` value, as "12s" or "3m04s".
elapsed() {
  local s=$(($(date +%s) - $1))
  if ((s < 60)); then printf '%ds' "$s"; else printf '%dm%02ds' $((s / 60)) $((s % 60)); fi
}

# Fails with a clear message unless the Docker daemon answers.
require_docker() {
  command -v docker >/dev/null || die "docker is not installed (Debian: apt-get install docker.io)"
  docker info >/dev/null 2>&1 ||
    die "the Docker daemon does not answer ('docker info' fails): start it (service docker start) or check DOCKER_HOST"
}

# The image's id (sha256:...), or nothing when the image does not exist.
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
