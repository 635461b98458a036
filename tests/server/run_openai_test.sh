#!/usr/bin/env bash
# CTest driver (label "server"): starts instructblip-server on a free loopback port (--port 0; the
# port it printed), waits for /health, runs openai_client_test.mjs with the official `openai` npm
# package, and stops the server by its PID on every path.
#   run_openai_test.sh SERVER GENERATE MODEL_DIR WORK_DIR IMAGE...
# Exit 77 (skipped) when node / npm are missing or the package cannot be installed.
set -uo pipefail
server_bin="$1" generate_bin="$2" model_dir="$3" work="$4"
shift 4
images=("$@")
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "skipped: node and npm are needed (Debian: apt-get install nodejs npm)"
  exit 77
fi

rm -rf "$work"
mkdir -p "$work"
cp "$here/package.json" "$here/package-lock.json" "$here/openai_client_test.mjs" "$work/"
if [ -d "$here/node_modules/openai" ]; then
  ln -s "$here/node_modules" "$work/node_modules"
else
  # The pinned version from package-lock.json, into the scratch directory.
  if ! npm ci --prefix "$work" --no-audit --no-fund --loglevel=error; then
    echo "skipped: 'npm ci' could not install the openai package (no network?)"
    exit 77
  fi
fi

log="$work/server.log"
"$server_bin" --model "$model_dir" --port 0 --threads 1 --parallel 4 >"$log" 2>&1 &
pid=$!
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
}
trap cleanup EXIT

port=""
for _ in $(seq 600); do
  port="$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)"
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "the server did not start:"; cat "$log"; exit 1
fi
url="http://127.0.0.1:$port"
# /health: 503 while the model loads, then 200 (at most 60 s).
if ! node -e '
  const url = process.argv[1] + "/health", until = Date.now() + 60000;
  (async () => {
    for (;;) {
      try { const r = await fetch(url); if (r.status === 200) process.exit(0); if (r.status !== 503) process.exit(1); }
      catch (e) {}
      if (Date.now() > until) process.exit(1);
      await new Promise((ok) => setTimeout(ok, 100));
    }
  })();' "$url"; then
  echo "the server did not become healthy:"; cat "$log"; exit 1
fi

IB_SERVER_URL="$url" IB_GENERATE="$generate_bin" IB_MODEL_DIR="$model_dir" IB_IMAGES="$(IFS=:; echo "${images[*]}")" \
  node "$work/openai_client_test.mjs"
rc=$?
if [ $rc -ne 0 ]; then echo "--- server log ---"; cat "$log"; fi
exit $rc
