#!/usr/bin/env bash
# Install the Debian/Ubuntu packages the project needs, only where missing.
#   scripts/sysdeps.sh build   headers to compile mysqlclient (make run, make test)
#   scripts/sysdeps.sh test    + a MariaDB server (throwaway test database), nginx, wrk, systemd-analyze
# Without root or apt-get it prints the exact command to run instead, and fails.
set -euo pipefail

want=()
have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if ! pkg-config --exists libmariadb 2>/dev/null && ! pkg-config --exists mysqlclient 2>/dev/null; then
  want+=(libmariadb-dev pkg-config)
fi
have_cmd gcc || want+=(gcc)
if [ "${1:-build}" = "test" ]; then
  have_cmd mariadbd || want+=(mariadb-server)
  have_cmd mariadb || want+=(mariadb-client)
  have_cmd nginx || want+=(nginx-light)
  have_cmd wrk || want+=(wrk)
  have_cmd systemd-analyze || want+=(systemd)   # tests/test_deploy.py: systemd-analyze verify
fi

[ ${#want[@]} -eq 0 ] && exit 0

echo "sysdeps: missing Debian packages: ${want[*]}" >&2
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else
      echo "sysdeps: run as root:  apt-get update && apt-get install -y ${want[*]}" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  echo "sysdeps: installed ${want[*]}" >&2
else
  echo "sysdeps: no apt-get here; install the equivalents of: ${want[*]}" >&2
  echo "         (MariaDB/MySQL client headers with pkg-config, a C compiler)" >&2
  exit 1
fi
