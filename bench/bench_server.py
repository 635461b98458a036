#!/usr/bin/python3
"""instructblip-server throughput under concurrent clients (issue: "Serve it over HTTP", point 4).

Starts the server itself (--port 0, on loopback), waits for /health, then for each number of
concurrent clients (default 1, 4, 8, 16) runs that many client threads, each sending
--requests streamed chat completions of the same image and instruction with exactly
--max-tokens tokens (min_new_tokens = max_tokens, greedy), and reports:
  completion tokens/s (all clients together), requests/min, the speed-up over one client,
  time to first token (first content delta) p50 / p99, and per-request latency p50.
Prints the CPU model first. Only the Python standard library is used.

usage: /usr/bin/python3 bench/bench_server.py --server build/server/instructblip-server \\
           --model models/tiny-random-flan-t5 [--weights q8_0] [--clients 1,4,8,16] [--requests 4] \\
           [--max-tokens 100] [--parallel 16] [--threads N] [--image FILE] [--json out.json]
The lead's measurement: the bundled model, and the random Flan-T5-XL-shaped checkpoint at q8_0
(target: 8 clients >= 2.5x the tokens/s of one, with 100-token answers).
"""
import argparse
import base64
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def start_server(args):
    log = tempfile.NamedTemporaryFile(prefix="bench_server_", suffix=".log", delete=False)
    cmd = [args.server, "--model", args.model, "--port", "0", "--parallel", str(args.parallel),
           "--max-queue", str(max(64, 4 * max(args.clients))), "--max-tokens", str(max(args.max_tokens, 1))]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    port = None
    deadline = time.time() + 600
    while time.time() < deadline and port is None:
        if proc.poll() is not None:
            break
        with open(log.name) as f:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        if m:
            port = int(m.group(1))
        else:
            time.sleep(0.05)
    if port is None:
        proc.kill()
        sys.exit("the server did not start:\n" + open(log.name).read())
    while time.time() < deadline:  # /health: 503 while loading, then 200
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, port, log.name
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    sys.exit("the server did not become healthy:\n" + open(log.name).read())


def one_request(port, body):
    """One streamed request: (seconds to the first content delta, total seconds, completion tokens)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError("status %d: %s" % (r.status, r.read()[:300]))
    ttft, tokens = None, 0
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        payload = line[6:]
        if payload == b"[DONE]":
            break
        ev = json.loads(payload)
        if "error" in ev:
            raise RuntimeError(ev["error"]["message"])
        if ttft is None and any(ch.get("delta", {}).get("content") for ch in ev.get("choices", [])):
            ttft = time.perf_counter() - t0
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    c.close()
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total, tokens


def run_level(port, body, clients, requests):
    results, errors = [], []
    lock = threading.Lock()

    def client():
        for _ in range(requests):
            try:
                res = one_request(port, body)
                with lock:
                    results.append(res)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        sys.exit("%d requests failed, e.g. %s" % (len(errors), errors[0]))
    tokens = sum(r[2] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "requests_per_min": len(results) / wall * 60.0,
        "ttft_p50_ms": percentile([r[0] for r in results], 50) * 1e3,
        "ttft_p99_ms": percentile([r[0] for r in results], 99) * 1e3,
        "latency_p50_ms": percentile([r[1] for r in results], 50) * 1e3,
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="the instructblip-server binary")
    ap.add_argument("--model", required=True, help="checkpoint directory")
    ap.add_argument("--weights", default="", help="f32 | bf16 | q8_0 | q4_0")
    ap.add_argument("--image", default=os.path.join(here, "..", "examples", "images", "Confusing-Pictures.jpg"))
    ap.add_argument("--prompt", default="What is unusual about this image?")
    ap.add_argument("--clients", default="1,4,8,16", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=100, help="tokens per answer (min_new_tokens too)")
    ap.add_argument("--parallel", type=int, default=16, help="the server's --parallel (rows in flight)")
    ap.add_argument("--threads", type=int, default=0, help="the server's --threads (0: its default)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c]

    print("CPU: %s (%d logical CPUs)" % (cpu_model(), os.cpu_count() or 0))
    print("model: %s%s, %d-token answers, server --parallel %d, %d requests per client"
          % (args.model, " (%s)" % args.weights if args.weights else "", args.max_tokens, args.parallel, args.requests))
    with open(args.image, "rb") as f:
        img = f.read()
    mime = "image/jpeg" if args.image.lower().endswith((".jpg", ".jpeg")) else "image/png"
    body = json.dumps({
        "model": "bench",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": args.prompt},
            {"type": "image_url", "image_url": {"url": "data:%s;base64,%s" % (mime, base64.b64encode(img).decode())}}]}],
        "temperature": 0, "max_tokens": args.max_tokens, "min_new_tokens": args.max_tokens,
        "stream": True, "stream_options": {"include_usage": True},
    })

    proc, port, log = start_server(args)
    try:
        one_request(port, body)  # warm-up
        rows = []
        print("%8s %9s %10s %12s %9s %10s %10s %12s" % ("clients", "requests", "tokens/s", "requests/min", "speed-up",
                                                         "TTFT p50", "TTFT p99", "latency p50"))
        for c in args.clients:
            r = run_level(port, body, c, args.requests)
            base = rows[0]["tokens_per_s"] if rows and rows[0]["clients"] == 1 else None
            r["speedup_vs_1"] = r["tokens_per_s"] / base if base else (1.0 if c == 1 else float("nan"))
            rows.append(r)
            print("%8d %9d %10.1f %12.1f %8.2fx %8.0f ms %8.0f ms %9.0f ms" % (
                c, r["requests"], r["tokens_per_s"], r["requests_per_min"], r["speedup_vs_1"], r["ttft_p50_ms"],
                r["ttft_p99_ms"], r["latency_p50_ms"]))
            sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cpu": cpu_model(), "model": args.model, "weights": args.weights,
                           "max_tokens": args.max_tokens, "parallel": args.parallel, "levels": rows}, f, indent=1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.unlink(log)


if __name__ == "__main__":
    main()
