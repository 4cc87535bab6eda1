#!/usr/bin/env python3
"""Runs every measurement of the benchmark in one go (see BENCHMARKS.md); started by bench/run.sh.

Three paths to the same zero-delay answer, driven by the same load generator (oha):
  direct  - oha -> nginx returning a fixed chat.completion (the floor)
  ours    - oha -> gateway -> Unix socket -> bridge-agent -> WebSocket -> zero-peer
  litellm - oha -> LiteLLM proxy -> the same nginx responder
Auth, rate limiting (limits set high enough not to trigger) and the audit log stay on for ours.
"""
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OHA = REPO / "bench/.tools/bin/oha"
RELEASE = REPO / "target/release"
KEY = "bench-key-0123456789abcdef0123456789abcdef0123456789"
MODEL = "cursor-agent-local"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "benchmark"}]})
QUICK = "--quick" in sys.argv
# Only the million-request memory check (its figures go in results under "leak").
ONLY_LEAK = "--only-leak" in sys.argv
DURATION = "3s" if QUICK else "10s"
COMPLETION = json.dumps({
    "id": "chatcmpl-direct", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, headers=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"run.py: {url} did not come up within {timeout}s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Procs:
    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []

    def start(self, name, argv, env=None, cwd=None):
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=log, cwd=cwd,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def oha(url: str, *, concurrency: int, rate=None, requests=None, key=KEY, duration=None) -> dict:
    argv = [str(OHA), "--no-tui", "--output-format", "json", "-c", str(concurrency), "-m", "POST",
            "-T", "application/json", "-d", BODY]
    if key:
        argv += ["-H", f"Authorization: Bearer {key}"]
    argv += ["-n", str(requests)] if requests else ["-z", duration or DURATION]
    if rate:
        # Open-loop at a fixed rate; latency counted from when each request was due.
        argv += ["-q", str(rate), "--latency-correction"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    # A timed run cuts the requests still in flight at its end: oha lists them, they are no errors.
    cut = {"aborted due to deadline"}
    errors = sum(v for k, v in codes.items() if k != "200") + sum(
        v for k, v in data.get("errorDistribution", {}).items() if k not in cut)
    ms = lambda v: None if v is None else round(v * 1000, 3)
    return {"rps": round(data["summary"]["requestsPerSec"], 1), "ok": ok, "errors": errors,
            "p50_ms": ms(pct.get("p50")), "p99_ms": ms(pct.get("p99")), "p999_ms": ms(pct.get("p99.9"))}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-"))
    tmp.chmod(0o755)  # nginx's workers read the static stream from here
    procs = Procs(tmp)
    results = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                           "python": platform.python_version()},
               "versions": {"oha": subprocess.run([str(OHA), "--version"], capture_output=True, text=True).stdout.strip(),
                            "nginx": subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                            "litellm": "1.74.9"}}
    try:
        run(tmp, procs, results)
    finally:
        procs.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = REPO / "bench/results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    table = render(results)
    (out_dir / f"{stamp}.md").write_text(table)
    print(table)
    print(f"\nresults: bench/results/{stamp}.json and .md")


def run(tmp: Path, procs: Procs, results: dict) -> None:
    # --- the zero-delay responder behind direct and LiteLLM: nginx with a fixed answer --------
    nginx_port = free_port()
    # The direct streaming floor: the same 100-chunk answer as a static file.
    (tmp / "www/v1").mkdir(parents=True)
    (tmp / "www/v1/stream").write_text("".join(
        'data: {"id":"d","object":"chat.completion.chunk","created":0,"model":"%s","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n' % MODEL
        for _ in range(100)) + "data: [DONE]\n\n")
    (tmp / "nginx.conf").write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{nginx_port};
    location = /v1/chat/completions {{ default_type application/json; return 200 '{COMPLETION}'; }}
    location = /v1/stream {{ root {tmp}/www; default_type text/event-stream; error_page 405 =200 $uri; }}
    location = /health {{ return 200 'ok'; }}
  }}
}}
""")
    procs.start("nginx", ["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"])
    wait_http(f"http://127.0.0.1:{nginx_port}/health")
    direct = f"http://127.0.0.1:{nginx_port}/v1/chat/completions"

    # --- ours: zero-peer, bridge-agent, gateway ------------------------------------------------
    peer_port, agent_port, gw_port = free_port(), free_port(), free_port()
    peer = procs.start("zero-peer", [str(RELEASE / "zero-peer")], {"BENCH_PEER_ADDR": f"127.0.0.1:{peer_port}"})

    def start_pair(run: str):
        common = {"LOCAL_PROVIDER_BRIDGE_SOCKET": str(tmp / f"bridge-{run}.sock"),
                  "LOCAL_PROVIDER_LOG_LEVEL": "warning",
                  "LOCAL_PROVIDER_RESPONSE_TIMEOUT": "900", "LOCAL_PROVIDER_REQUEST_TIMEOUT": "900"}
        agent = procs.start(f"bridge-agent-{run}", [str(RELEASE / "bridge-agent")], {**common,
            "LOCAL_PROVIDER_MCP_BRIDGE_URL": f"ws://127.0.0.1:{peer_port}", "LOCAL_PROVIDER_BRIDGE_AGENT_PORT": str(agent_port)})
        gateway = procs.start(f"gateway-{run}", [str(RELEASE / "gateway")], {**common,
            "LOCAL_PROVIDER_PORT": str(gw_port), "LOCAL_PROVIDER_API_KEY": KEY,
            "LOCAL_PROVIDER_AUDIT_LOG": str(tmp / f"audit-{run}.log"),
            "LOCAL_PROVIDER_RATE_LIMIT_RPM": "1000000000", "LOCAL_PROVIDER_RATE_LIMIT_BURST": "1000000000",
            "LOCAL_PROVIDER_RATE_LIMIT_TPM": "1000000000000", "LOCAL_PROVIDER_MAX_CONCURRENT_REQUESTS": "20000"})
        wait_http(f"http://127.0.0.1:{gw_port}/health/ready")
        return agent, gateway

    ours = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    if ONLY_LEAK:
        leak(results, ours, *start_pair("leak"))
        return
    agent, gateway = start_pair("main")
    time.sleep(1)
    results["idle_rss_mb"] = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid),
                              "zero-peer": rss_mb(peer.pid)}
    oha(ours, concurrency=8, duration="2s")  # warm-up: connections, tokenizer
    results["warm_rss_mb"] = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid)}

    # --- LiteLLM in front of the same nginx ----------------------------------------------------
    litellm_port = free_port()
    (tmp / "litellm.yaml").write_text(f"""
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{nginx_port}/v1
      api_key: unused
litellm_settings:
  set_verbose: false
  json_logs: true
  turn_off_message_logging: true
general_settings:
  master_key: sk-{KEY}
  disable_spend_logs: true
  proxy_batch_write_at: 60
""")
    procs.start("litellm", [str(REPO / "bench/.venv/bin/litellm"), "--config", str(tmp / "litellm.yaml"),
                            "--host", "127.0.0.1", "--port", str(litellm_port), "--num_workers", "2"],
                {"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION"})
    wait_http(f"http://127.0.0.1:{litellm_port}/health/liveliness", timeout=180)
    litellm = f"http://127.0.0.1:{litellm_port}/v1/chat/completions"

    # --- fixed concurrency ---------------------------------------------------------------------
    results["concurrency"] = {}
    for c in (1, 16, 64, 256):
        row = {"direct": oha(direct, concurrency=c, key=None), "ours": oha(ours, concurrency=c)}
        row["litellm"] = oha(litellm, key=f"sk-{KEY}", concurrency=c)
        results["concurrency"][c] = row
        print(f"c={c}: {json.dumps(row)}", flush=True)

    # --- fixed offered rates: the overhead over direct -----------------------------------------
    results["rate"] = {}
    for rate in (500, 1000):
        row = {"direct": oha(direct, concurrency=64, rate=rate, key=None),
               "ours": oha(ours, concurrency=64, rate=rate),
               "litellm": oha(litellm, key=f"sk-{KEY}", concurrency=64, rate=rate)}
        results["rate"][rate] = row
        print(f"rate={rate}: {json.dumps(row)}", flush=True)

    # --- streams: time to first chunk and relay cost of 100-chunk answers ----------------------
    probe = str(RELEASE / "stream-probe")
    n = "50" if QUICK else "200"
    results["stream"] = {
        "ours": json.loads(subprocess.run([probe, "ttfc", ours, KEY, n], capture_output=True, text=True, check=True).stdout),
        "direct": json.loads(subprocess.run([probe, "ttfc", f"http://127.0.0.1:{nginx_port}/v1/stream", KEY, n],
                                            capture_output=True, text=True, check=True).stdout),
    }
    print(f"stream: {json.dumps(results['stream'])}", flush=True)

    # --- concurrent open streams, each answering slowly ----------------------------------------
    results["held_streams"] = {}
    pids = f"{gateway.pid},{agent.pid},{peer.pid}"
    for streams in ((1000,) if QUICK else (1000, 10000)):
        out = subprocess.run([probe, "hold", ours, KEY, str(streams), pids], capture_output=True, text=True,
                             check=True).stdout
        results["held_streams"][streams] = json.loads(out)
        print(f"held {streams}: {out.strip()}", flush=True)
        time.sleep(3)

    # --- a million requests on a fresh pair: does memory stay put? ----------------------------
    for p in (gateway, agent):
        p.terminate()
        p.wait(timeout=30)
    leak(results, ours, *start_pair("leak"))


def leak(results: dict, ours: str, agent, gateway) -> None:
    total = 100_000 if QUICK else 1_000_000
    first = oha(ours, concurrency=64, requests=10_000)
    rss_first = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid)}
    rest = oha(ours, concurrency=64, requests=total - 10_000)
    rss_last = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid)}
    results["leak"] = {"requests": total, "rss_after_10k_mb": rss_first, "rss_after_all_mb": rss_last,
                       "errors": first["errors"] + rest["errors"], "rps": rest["rps"]}
    print(f"leak: {json.dumps(results['leak'])}", flush=True)


def render(r: dict) -> str:
    if "concurrency" not in r:
        leak = r["leak"]
        return (f"RSS after 10k requests {leak['rss_after_10k_mb']}, after {leak['requests']:,}: "
                f"{leak['rss_after_all_mb']} ({leak['errors']} errors, {leak['rps']:,} rps)\n")
    lines = ["## Fixed concurrency (requests/s; latency ms p50 / p99 / p99.9; errors)", "",
             "| c | direct | ours | LiteLLM | ours ÷ LiteLLM |", "|---|---|---|---|---|"]
    cell = lambda x: f"{x['rps']:,} rps; {x['p50_ms']} / {x['p99_ms']} / {x['p999_ms']}; {x['errors']} err"
    for c, row in r["concurrency"].items():
        ratio = row["ours"]["rps"] / row["litellm"]["rps"] if row["litellm"]["rps"] else float("inf")
        lines.append(f"| {c} | {cell(row['direct'])} | {cell(row['ours'])} | {cell(row['litellm'])} | {ratio:,.0f}× |")
    lines += ["", "## Fixed offered rate (latency ms p50 / p99 / p99.9; added = ours − direct)", "",
              "| rate | direct | ours | LiteLLM | added p50 | added p99 |", "|---|---|---|---|---|---|"]
    for rate, row in r["rate"].items():
        d, o = row["direct"], row["ours"]
        lines.append(f"| {rate}/s | {cell(d)} | {cell(o)} | {cell(row['litellm'])} | "
                     f"{o['p50_ms'] - d['p50_ms']:.3f} ms | {o['p99_ms'] - d['p99_ms']:.3f} ms |")
    s = r["stream"]
    per_chunk = (s["ours"]["total_us"]["p50"] - s["direct"]["total_us"]["p50"]) / max(s["ours"]["content_chunks"], 1)
    lines += ["", "## Streams (100-chunk answers)", "",
              f"- time to first chunk p50 / p99: ours {s['ours']['ttfc_us']['p50']} / {s['ours']['ttfc_us']['p99']} µs, "
              f"direct {s['direct']['ttfc_us']['p50']} / {s['direct']['ttfc_us']['p99']} µs",
              f"- whole answer p50: ours {s['ours']['total_us']['p50']} µs, direct {s['direct']['total_us']['p50']} µs; "
              f"relay cost ≈ {per_chunk:.1f} µs per chunk ({s['ours']['content_chunks']} chunks)"]
    lines += ["", "## Memory", "", f"- idle RSS (MB): {r['idle_rss_mb']}", f"- after warm-up (MB): {r['warm_rss_mb']}"]
    for n, h in r["held_streams"].items():
        total = sum((x["rss_bytes"] or 0) for x in h["rss"][:2]) / 1e6
        lines.append(f"- {n} open streams (failed {h['failed']}, opened in {h['opened_in_ms']} ms): "
                     + ", ".join(f"pid {x['pid']} {round((x['rss_bytes'] or 0) / 1e6, 1)} MB" for x in h["rss"])
                     + f"; the pair {total:.1f} MB")
    leak = r["leak"]
    lines.append(f"- RSS after 10k requests {leak['rss_after_10k_mb']}, after {leak['requests']:,}: "
                 f"{leak['rss_after_all_mb']} ({leak['errors']} errors, {leak['rps']:,} rps)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
