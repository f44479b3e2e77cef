#!/usr/bin/env bash
# The project's two entry points (see README.md):
#   ./tasks.sh demo [--duration SECONDS]   simulated plant + MES + broker + agent, records printed live
#   ./tasks.sh test                        ruff, mypy and the whole test suite
# Each creates or updates the virtual environment in .venv, installs the project with its dev
# extras, and installs Debian's mosquitto (and, for the tests, postgresql and nodejs/npm) when
# missing (as root; otherwise says what to run).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${EDGE_AGENT_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

need_root_or_say() {  # $1 = Debian packages
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing Debian packages: $1"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $1 >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $1 >/dev/null
        fi
    else
        echo "error: missing Debian packages: $1 — run: sudo apt-get install -y $1" >&2
        exit 1
    fi
}

ensure_system() {
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: Python 3.11 or newer is required ($PYTHON)" >&2; exit 1
    fi
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        need_root_or_say "python3-venv"
    fi
    if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
        need_root_or_say "mosquitto"
    fi
    # The distribution's broker service is not needed: tests and the demo start their own.
}

ensure_test_system() {
    # The hub's tests start their own PostgreSQL server (initdb + pg_ctl in a temporary folder)
    # and run the WBCSD's PACT conformance tool (Node.js, its packages from the npm registry).
    if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        need_root_or_say "postgresql"
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        need_root_or_say "nodejs npm"
    fi
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "==> installing edge-agent and its dev extras into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e '.[dev]'
        touch "$stamp"
    fi
}

run_pytest() {  # exit status 5 is "no test selected" (e.g. a path without serial tests)
    local status=0
    "$VENV/bin/pytest" -q -p no:cacheprovider "$@" || status=$?
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
    demo)
        ensure_system; ensure_venv
        exec "$VENV/bin/python" -m simulators.demo "$@"
        ;;
    test)
        ensure_system; ensure_test_system; ensure_venv
        echo "==> ruff"; "$VENV/bin/ruff" check .; "$VENV/bin/ruff" format --check .
        echo "==> mypy"; "$VENV/bin/mypy"
        # Most of the suite's time is real-time waiting (brokers, simulated plants, the kill
        # soak), not CPU: test files run in ${EDGE_TEST_WORKERS:-3} processes side by side; the
        # tests marked serial (throughput) then run alone. Exit status 5 is "nothing selected".
        echo "==> pytest (${EDGE_TEST_WORKERS:-3} processes)"
        run_pytest -n "${EDGE_TEST_WORKERS:-3}" --dist loadfile -m "not long and not serial" "$@"
        echo "==> pytest (tests that need the machine to themselves)"
        run_pytest -m "serial and not long" "$@"
        ;;
    *)
        echo "usage: ./tasks.sh demo [--duration SECONDS] | ./tasks.sh test [pytest args]" >&2
        exit 2
        ;;
esac
