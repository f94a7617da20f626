#!/usr/bin/env bash
# Install what `pipework bench daemon` compares pipework serve with: the Redis
# server (a Debian package, with apt-get, only if redis-server is missing) and
# the peer task queues (huey, Dramatiq, Celery, RQ: the `bench` extra).
#
# Run from anywhere: bash benchmarks/setup-peers.sh [path/to/python]
# The Python defaults to the checkout's .venv, else python3 on PATH.
# Not run by CI: CI does not run the daemon comparison.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${1:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> redis-server is missing: installing it with apt-get"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq redis-server
fi
# The benchmark starts its own Redis on a private socket; the packaged service is not needed.
echo "==> $(redis-server --version)"

echo "==> $python -m pip install -e '.[bench]'"
"$python" -m pip install --quiet -e '.[bench]'
echo "==> ready: pipework bench daemon"
