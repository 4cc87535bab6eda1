#!/usr/bin/env python3
"""Runs every measurement of the benchmark in one go (see BENCHMARKS.md); started by bench/run.sh.

Three paths to the same zero-delay answer, driven by the same load generator (oha):
  direct  - oha -> nginx returning a fixed chat.completion (the floor)
  ours    - oha -> gateway -> Unix socket -> bridge-agent -> WebSocket -> zero-peer
  litellm - oha -> LiteLLM proxy -> the same nginx responder
Auth, rate limiting (limits set high enough not to trigger) and the audit log stay on for ours.

The chain through mcp-bridge (also alone with --chain, see BENCHMARKS.md): oha -> gateway ->
bridge-agent -> mcp-bridge -> MCP agents (bench's mcp-agent, 1, 2 and 4 sessions answering `ok`).

--allocs and --profile measure ours alone instead (see BENCHMARKS.md, "Allocations and profile"):
calls to the allocator per chat and per streamed chunk (heaptrack), and where the gateway's and
bridge-agent's CPU time goes at c=64 (perf); --quick shortens both.
"""
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OHA = REPO / "bench/.tools/bin/oha"
# The cost modes (--allocs, --profile) need symbols and line tables: run.sh builds them with the
# bench-profile Cargo profile (release code plus line tables) into target/bench-profile.
# BENCH_COST_BUILD=release samples the release binaries instead (function symbols only: no lines,
# inlined functions counted in their callers), when a second full build does not fit.
ALLOCS = "--allocs" in sys.argv
PROFILE = "--profile" in sys.argv
COST_BUILD = os.environ.get("BENCH_COST_BUILD", "bench-profile")
if COST_BUILD not in ("bench-profile", "release"):
    raise SystemExit(f"run.py: BENCH_COST_BUILD is {COST_BUILD!r}; it takes bench-profile or release")
BUILD = REPO / (f"target/{COST_BUILD}" if ALLOCS or PROFILE else "target/release")
TOOLS = REPO / "bench/.tools/bin"
KEY = "bench-key-0123456789abcdef0123456789abcdef0123456789"
MODEL = "cursor-agent-local"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "benchmark"}]})
QUICK = "--quick" in sys.argv
# Only the million-request memory check (its figures go in results under "leak").
ONLY_LEAK = "--only-leak" in sys.argv
# --compare DIR: ours as built now against the release binaries in DIR (an earlier commit's), both
# pairs running side by side and measured cell by cell in turn, beside direct; no LiteLLM.
COMPARE = Path(sys.argv[sys.argv.index("--compare") + 1]).resolve() if "--compare" in sys.argv else None
# --chain: only the figures through mcp-bridge, beside direct and zero-peer (with --compare: for
# both builds). --queue redis: each mcp-bridge keeps its queue in a redis-server of its own, on a
# free port, without persistence. --mcp-bridge-env KEY=VALUE (repeatable): more of mcp-bridge's
# environment, given to it alone.
CHAIN = "--chain" in sys.argv
# --long-run N (with --compare): N requests at c=64 through a fresh pair of each build, then its RSS.
LONG_RUN = int(sys.argv[sys.argv.index("--long-run") + 1]) if "--long-run" in sys.argv else 0
QUEUE = sys.argv[sys.argv.index("--queue") + 1] if "--queue" in sys.argv else "memory"
MCP_BRIDGE_ENV = dict(sys.argv[i + 1].split("=", 1) for i, a in enumerate(sys.argv) if a == "--mcp-bridge-env")
CHAIN_AGENTS = (1, 2, 4)
CHAIN_CONCURRENCY = (1, 16, 64)
CHAIN_PROCESSES = ("gateway", "bridge-agent", "mcp-bridge", "mcp-agent")
BRIDGE_TOKEN = "bench-bridge-0123456789abcdef0123456789abcdef"
MCP_TOKEN = "bench-mcp-0123456789abcdef0123456789abcdef"
DURATION = "3s" if QUICK else "10s"
OUT_DIR = REPO / "bench/results"
STAMP = time.strftime("%Y%m%d-%H%M%S")
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


def oha_argv(url: str, *, concurrency: int, rate=None, requests=None, key=KEY, duration=None, body=BODY) -> list:
    argv = [str(OHA), "--no-tui", "--output-format", "json", "-c", str(concurrency), "-m", "POST",
            "-T", "application/json", "-d", body]
    if key:
        argv += ["-H", f"Authorization: Bearer {key}"]
    argv += ["-n", str(requests)] if requests else ["-z", duration or DURATION]
    if rate:
        # Open-loop at a fixed rate; latency counted from when each request was due.
        argv += ["-q", str(rate), "--latency-correction"]
    return argv + [url]


def oha(url: str, **kwargs) -> dict:
    out = subprocess.run(oha_argv(url, **kwargs), capture_output=True, text=True, check=True).stdout
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
    OUT_DIR.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-"))
    tmp.chmod(0o755)  # nginx's workers read the static stream from here
    procs = Procs(tmp)
    results = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                           "python": platform.python_version()},
               "versions": {"oha": subprocess.run([str(OHA), "--version"], capture_output=True, text=True).stdout.strip()
                                   if OHA.exists() else None,
                            "nginx": subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                            "litellm": "1.74.9"}}
    try:
        run(tmp, procs, results)
    finally:
        procs.stop()
    stamp, out_dir = STAMP, OUT_DIR
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
    peer = procs.start("zero-peer", [str(BUILD / "zero-peer")], {"BENCH_PEER_ADDR": f"127.0.0.1:{peer_port}"})

    def start_pair(run: str, wrap=lambda service: [], build=BUILD, ports=(agent_port, gw_port), bridge=None):
        """Starts bridge-agent and the gateway from `build`, each behind `wrap(service)` (a tool's argv
        or none), on `ports` (bridge-agent's health port, the gateway's); bridge-agent links to
        `bridge` (an mcp-bridge's WebSocket URL and token), else to zero-peer."""
        agent_port, gw_port = ports
        bridge_url, bridge_token = bridge or (f"ws://127.0.0.1:{peer_port}", None)
        common = {"LOCAL_PROVIDER_BRIDGE_SOCKET": str(tmp / f"bridge-{run}.sock"),
                  "LOCAL_PROVIDER_LOG_LEVEL": "warning",
                  "LOCAL_PROVIDER_RESPONSE_TIMEOUT": "900", "LOCAL_PROVIDER_REQUEST_TIMEOUT": "900"}
        agent = procs.start(f"bridge-agent-{run}", wrap("bridge-agent") + [str(build / "bridge-agent")], {**common,
            "LOCAL_PROVIDER_MCP_BRIDGE_URL": bridge_url, "LOCAL_PROVIDER_BRIDGE_AGENT_PORT": str(agent_port),
            **({"LOCAL_PROVIDER_MCP_BRIDGE_TOKEN": bridge_token} if bridge_token else {})})
        gateway = procs.start(f"gateway-{run}", wrap("gateway") + [str(build / "gateway")], {**common,
            "LOCAL_PROVIDER_PORT": str(gw_port), "LOCAL_PROVIDER_API_KEY": KEY,
            "LOCAL_PROVIDER_AUDIT_LOG": str(tmp / f"audit-{run}.log"),
            "LOCAL_PROVIDER_RATE_LIMIT_RPM": "1000000000", "LOCAL_PROVIDER_RATE_LIMIT_BURST": "1000000000",
            "LOCAL_PROVIDER_RATE_LIMIT_TPM": "1000000000000", "LOCAL_PROVIDER_MAX_CONCURRENT_REQUESTS": "20000",
            # 10,000 held streams and the load generators' connections, within run.sh's raised limit.
            "LOCAL_PROVIDER_MAX_CONNECTIONS": "12000"})
        wait_http(f"http://127.0.0.1:{gw_port}/health/ready")
        return agent, gateway

    ours = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    if ONLY_LEAK:
        leak(results, ours, *start_pair("leak"))
        return
    if ALLOCS:
        allocs(tmp, procs, results, ours, start_pair)
    if PROFILE and CHAIN:
        profile_chain(tmp, procs, results, start_pair)
    elif PROFILE:
        profile(tmp, results, ours, start_pair)
    if ALLOCS or PROFILE:
        return
    if CHAIN:
        builds = {"now": BUILD, **({"before": COMPARE} if COMPARE else {})}
        chains = {name: start_chain(tmp, procs, name, build, start_pair) for name, build in builds.items()}
        start_pair("main")
        oha(ours, concurrency=8, duration="2s")  # warm-up: connections, tokenizer
        results["chain"] = {"zero_peer": {c: oha(ours, concurrency=c) for c in CHAIN_CONCURRENCY}}
        chain(tmp, procs, results["chain"], direct, chains)
        return
    if COMPARE:
        compare(results, direct, nginx_port, peer, start_pair)
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
    litellm_proc = procs.start("litellm", [str(REPO / "bench/.venv/bin/litellm"), "--config", str(tmp / "litellm.yaml"),
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
    probe = str(BUILD / "stream-probe")
    n = "50" if QUICK else "200"
    results["stream"] = {
        "ours": json.loads(subprocess.run([probe, "ttfc", ours, KEY, n], capture_output=True, text=True, check=True).stdout),
        "direct": json.loads(subprocess.run([probe, "ttfc", f"http://127.0.0.1:{nginx_port}/v1/stream", KEY, n],
                                            capture_output=True, text=True, check=True).stdout),
    }
    print(f"stream: {json.dumps(results['stream'])}", flush=True)

    # --- the chain through mcp-bridge, with LiteLLM stopped (its workers keep a core busy) --------
    os.killpg(litellm_proc.pid, signal.SIGTERM)
    results["chain"] = {"zero_peer": {c: results["concurrency"][c]["ours"] for c in CHAIN_CONCURRENCY},
                        "litellm": {c: results["concurrency"][c]["litellm"] for c in CHAIN_CONCURRENCY}}
    chain(tmp, procs, results["chain"], direct, {"now": start_chain(tmp, procs, "now", BUILD, start_pair)})

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


# --- the chain through mcp-bridge ------------------------------------------------------------------
def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def wait_until(pred, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise SystemExit(f"run.py: timed out waiting for {what}")
        time.sleep(0.05)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_chain(tmp: Path, procs: Procs, name: str, build: Path, start_pair) -> dict:
    """mcp-bridge from `build` (its queue as --queue and --mcp-bridge-env say, both tokens set, its
    audit log on), and bridge-agent and the gateway from `build` linked to it."""
    port = free_port()
    env = {"LOCAL_PROVIDER_MCP_BRIDGE_PORT": str(port), "LOCAL_PROVIDER_MCP_BRIDGE_TOKEN": BRIDGE_TOKEN,
           "LOCAL_PROVIDER_MCP_HTTP_TOKEN": MCP_TOKEN, "LOCAL_PROVIDER_LOG_LEVEL": "warning",
           "LOCAL_PROVIDER_MCP_BRIDGE_AUDIT_LOG": str(tmp / f"mcp-audit-{name}.log")}
    if QUEUE == "redis":
        # One server per mcp-bridge: two bridges on one queue would take each other's requests.
        redis_port = free_port()
        procs.start(f"redis-{name}", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"])
        wait_until(lambda: listening(redis_port), "redis-server")
        env.update({"LOCAL_PROVIDER_QUEUE": "redis", "LOCAL_PROVIDER_REDIS_URL": f"redis://127.0.0.1:{redis_port}"})
    elif QUEUE != "memory":
        raise SystemExit(f"run.py: --queue takes memory or redis, not {QUEUE!r}")
    env.update(MCP_BRIDGE_ENV)
    bridge = procs.start(f"mcp-bridge-{name}", [str(build / "mcp-bridge")], env)
    wait_http(f"http://127.0.0.1:{port}/health/live")
    ports = (free_port(), free_port())
    agent, gateway = start_pair(f"chain-{name}", build=build, ports=ports, bridge=(f"ws://127.0.0.1:{port}", BRIDGE_TOKEN))
    return {"gateway": f"http://127.0.0.1:{ports[1]}/v1/chat/completions", "mcp": f"http://127.0.0.1:{port}/mcp",
            "health": f"http://127.0.0.1:{port}/health", "mcp_bridge_env": {k: v for k, v in env.items() if "TOKEN" not in k},
            "pids": {"gateway": gateway.pid, "bridge-agent": agent.pid, "mcp-bridge": bridge.pid}}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time `pid` has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Agents:
    """`mcp-agent --agents n` (today's build) serving one chain; it logs a `handoff_us` line for each
    stamped chat it holds (`stream-probe handoff`)."""

    def __init__(self, tmp: Path, procs: Procs, name: str, chain: dict, n: int):
        self.chain, self.n, self.log = chain, n, tmp / f"mcp-agent-{name}-{n}.log"
        self.proc = procs.start(f"mcp-agent-{name}-{n}", [str(BUILD / "mcp-agent"), chain["mcp"], "--agents", str(n)],
                                {"LOCAL_PROVIDER_MCP_HTTP_TOKEN": MCP_TOKEN})

    def polls(self) -> int:
        return get_json(self.chain["health"])["waiting_polls"]

    def wait_polling(self) -> None:
        wait_until(lambda: self.proc.poll() is None and self.polls() == self.n, f"{self.n} agents polling")

    def handoffs(self) -> list:
        if self.proc.poll() is not None:
            raise SystemExit(f"run.py: mcp-agent ended: see {self.log}")
        return [float(line.split()[1]) for line in self.log.read_text().splitlines() if line.startswith("handoff_us ")]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=15)
        wait_until(lambda: self.polls() == 0, "the agents' polls dropped")


def percentiles(values: list) -> dict:
    ordered = sorted(values)
    at = lambda p: round(ordered[min(round(p / 100 * (len(ordered) - 1)), len(ordered) - 1)], 1) if ordered else None
    return {"n": len(ordered), "p50_us": at(50), "p99_us": at(99)}


def chain(tmp: Path, procs: Procs, out: dict, direct: str, chains: dict) -> None:
    """For 1, 2 and 4 agents on each chain: hand-off at c=1 and c=16 (stamped chats), then oha at
    c=1, 16 and 64; cell by cell, each chain in turn, beside direct at c=1 (the floor)."""
    probe = str(BUILD / "stream-probe")
    stamped = {1: 200 if QUICK else 1000, 16: 800 if QUICK else 4000}
    out.update({"queue": QUEUE, "mcp_bridge_env": {n: c["mcp_bridge_env"] for n, c in chains.items()},
                "builds": {"now": str(BUILD), **({"before": str(COMPARE)} if COMPARE else {})}, "agents": {}})
    for n in CHAIN_AGENTS:
        agents = {name: Agents(tmp, procs, name, c, n) for name, c in chains.items()}
        for name, a in agents.items():
            a.wait_polling()
            oha(chains[name]["gateway"], concurrency=8, duration="1s")  # warm-up: connections, tokenizer
        row = {"direct_c1": oha(direct, concurrency=1, key=None), **{name: {} for name in chains}}
        for c, count in stamped.items():
            for name, a in agents.items():
                seen = len(a.handoffs())
                done = json.loads(subprocess.run([probe, "handoff", chains[name]["gateway"], KEY, str(count), str(c)],
                                                 capture_output=True, text=True, check=True).stdout)
                row[name][f"handoff_c{c}"] = {**percentiles(a.handoffs()[seen:]), "failed": done["failed"],
                                              "answer_us": done["total_us"]}
        for c in CHAIN_CONCURRENCY:
            for name, ch in chains.items():
                # CPU time per answered request of each process of the chain, over the cell.
                pids = {**ch["pids"], "mcp-agent": agents[name].proc.pid}
                before = {k: cpu_seconds(pid) for k, pid in pids.items()}
                row[name][f"c={c}"] = cell = oha(ch["gateway"], concurrency=c)
                cell["cpu_us_per_request"] = {k: round((cpu_seconds(pid) - before[k]) * 1e6 / max(cell["ok"], 1))
                                              for k, pid in pids.items()}
        for a in agents.values():
            a.stop()
        out["agents"][n] = row
        print(f"chain, {n} agents: {json.dumps(row)}", flush=True)


def render_chain(r: dict) -> str:
    us = lambda h: f"{h['p50_us']:,.0f} / {h['p99_us']:,.0f}" if h["n"] else "none seen"
    ms = lambda x: f"{x['p50_ms']} / {x['p99_ms']}"
    builds = list(r["builds"])
    lines = [f"## The chain through mcp-bridge (queue: {r['queue']})", "",
             "gateway → bridge-agent → mcp-bridge → MCP agents (`mcp-agent`, one `submit_response` of `ok` each). "
             "Hand-off: from the editor sending a chat to an agent holding it (µs p50 / p99; stamped chats). "
             "Answer at c=1: oha's latency (ms p50 / p99), and added over direct (nginx) in the same row.", "",
             "| agents | build | hand-off c=1 | hand-off c=16 | answer c=1 | added p50 / p99 (ms) | c=1 rps | c=16 rps | c=64 rps | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n, row in r["agents"].items():
        d = row["direct_c1"]
        for name in builds:
            x = row[name]
            one = x["c=1"]
            errors = sum(x[f"c={c}"]["errors"] for c in CHAIN_CONCURRENCY) + sum(
                x[f"handoff_c{c}"]["failed"] for c in (1, 16))
            lines.append(f"| {n} | {name} | {us(x['handoff_c1'])} | {us(x['handoff_c16'])} | {ms(one)} | "
                         f"{one['p50_ms'] - d['p50_ms']:.3f} / {one['p99_ms'] - d['p99_ms']:.3f} | "
                         + " | ".join(f"{x[f'c={c}']['rps']:,}" for c in CHAIN_CONCURRENCY) + f" | {errors} |")
    lines += ["", "CPU time per answered request at c=64 (µs; user + system, from /proc):", "",
              "| agents | build | " + " | ".join(CHAIN_PROCESSES) + " |", "|---|---|" + "---|" * len(CHAIN_PROCESSES)]
    for n, row in r["agents"].items():
        for name in builds:
            cpu = row[name]["c=64"]["cpu_us_per_request"]
            lines.append(f"| {n} | {name} | " + " | ".join(f"{cpu[p]:,}" for p in CHAIN_PROCESSES) + " |")
    lines += ["", "Beside it, the same oha cells without mcp-bridge (requests/s; latency ms p50 / p99):", "",
              "| c | zero-peer | LiteLLM |", "|---|---|---|"]
    for c in CHAIN_CONCURRENCY:
        z = r["zero_peer"][c]
        lite = r.get("litellm", {}).get(c)
        lines.append(f"| {c} | {z['rps']:,} rps; {ms(z)} | " + (f"{lite['rps']:,} rps; {ms(lite)}" if lite else "not run") + " |")
    lines += ["", f"direct at c=1 (each row's floor): " + ", ".join(
        f"{n} agents {row['direct_c1']['p50_ms']} / {row['direct_c1']['p99_ms']} ms" for n, row in r["agents"].items())]
    return "\n".join(lines) + "\n"


def compare(results: dict, direct: str, nginx_port: int, peer, start_pair) -> None:
    """Ours now and ours as built in COMPARE, side by side, cell by cell (see --compare)."""
    pairs = {"now": BUILD, "before": COMPARE}
    urls, pids = {}, {}
    for name, build in pairs.items():
        ports = (free_port(), free_port())
        agent, gateway = start_pair(name, build=build, ports=ports)
        urls[name] = f"http://127.0.0.1:{ports[1]}/v1/chat/completions"
        pids[name] = (gateway, agent)
    time.sleep(1)
    results["compare"] = {"before_dir": str(COMPARE), "idle_rss_mb": {}, "warm_rss_mb": {}}
    for name, (gateway, agent) in pids.items():
        results["compare"]["idle_rss_mb"][name] = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid)}
        oha(urls[name], concurrency=8, duration="2s")  # warm-up: connections, tokenizer
        results["compare"]["warm_rss_mb"][name] = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid)}
    cells = {}
    for c in (1, 16, 64, 256):
        row = {"direct": oha(direct, concurrency=c, key=None)}
        row.update({name: oha(url, concurrency=c) for name, url in urls.items()})
        cells[f"c={c}"] = row
        print(f"c={c}: {json.dumps(row)}", flush=True)
    for rate in (500, 1000):
        row = {"direct": oha(direct, concurrency=64, rate=rate, key=None)}
        row.update({name: oha(url, concurrency=64, rate=rate) for name, url in urls.items()})
        cells[f"rate={rate}"] = row
        print(f"rate={rate}: {json.dumps(row)}", flush=True)
    results["compare"]["cells"] = cells
    probe = str(BUILD / "stream-probe")
    n = "50" if QUICK else "200"
    stream = {"direct": json.loads(subprocess.run([probe, "ttfc", f"http://127.0.0.1:{nginx_port}/v1/stream", KEY, n],
                                                  capture_output=True, text=True, check=True).stdout)}
    for name, url in urls.items():
        stream[name] = json.loads(subprocess.run([probe, "ttfc", url, KEY, n], capture_output=True, text=True,
                                                 check=True).stdout)
    results["compare"]["stream"] = stream
    print(f"stream: {json.dumps(stream)}", flush=True)
    held = {}
    for name, url in urls.items():
        gateway, agent = pids[name]
        out = subprocess.run([probe, "hold", url, KEY, "1000" if QUICK else "10000", f"{gateway.pid},{agent.pid},{peer.pid}"],
                             capture_output=True, text=True, check=True).stdout
        held[name] = json.loads(out)
        print(f"held {name}: {out.strip()}", flush=True)
        time.sleep(3)
    results["compare"]["held_streams"] = held
    results["compare"]["held_count"] = 1000 if QUICK else 10000
    # Syscalls per non-streamed chat, gateway and bridge-agent together, at c=64.
    results["compare"]["syscalls"] = {name: syscalls_per_chat(urls[name], pids[name]) for name in urls}
    print(f"syscalls: {json.dumps(results['compare']['syscalls'])}", flush=True)
    if LONG_RUN:
        # RSS after LONG_RUN requests at c=64 through a fresh pair of each build in turn: the pairs
        # above keep what the 10,000 held streams took (the allocator does not give it back).
        long = {}
        for name, build in pairs.items():
            ports = (free_port(), free_port())
            agent, gateway = start_pair(f"long-{name}", build=build, ports=ports)
            url = f"http://127.0.0.1:{ports[1]}/v1/chat/completions"
            run = oha(url, concurrency=64, requests=LONG_RUN)
            long[name] = {"requests": LONG_RUN, "errors": run["errors"], "rps": run["rps"],
                          "gateway_rss_mb": rss_mb(gateway.pid), "bridge_agent_rss_mb": rss_mb(agent.pid)}
            print(f"long run {name}: {json.dumps(long[name])}", flush=True)
        results["compare"]["long_run"] = long


SYSCALL_CHATS = 5_000 if QUICK else 20_000


def syscalls_per_chat(url: str, pair) -> dict:
    """Counts every syscall the gateway and bridge-agent enter (perf's raw_syscalls:sys_enter) while
    SYSCALL_CHATS non-streamed chats run at c=64, and divides by the chats."""
    pids = ",".join(str(p.pid) for p in pair)
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", pids],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # perf attaches before the load starts
    run = oha(url, concurrency=64, requests=SYSCALL_CHATS)
    perf.send_signal(signal.SIGINT)
    _, err = perf.communicate(timeout=30)
    counted = next((int(line.split(",")[0]) for line in err.splitlines()
                    if "raw_syscalls:sys_enter" in line and line.split(",")[0].isdigit()), None)
    per_chat = None if counted is None else round(counted / SYSCALL_CHATS, 2)
    return {"chats": SYSCALL_CHATS, "syscalls": counted, "per_chat": per_chat, "errors": run["errors"]}


def render_compare(r: dict) -> str:
    cell = lambda x: f"{x['rps']:,} rps; {x['p50_ms']} / {x['p99_ms']} / {x['p999_ms']}; {x['errors']} err"
    lines = [f"## Ours now against ours before ({r['before_dir']}), side by side", "",
             "Requests/s; latency ms p50 / p99 / p99.9; errors. Added = ours − direct.", "",
             "| cell | direct | now | before | added p50 now / before | added p99 now / before |",
             "|---|---|---|---|---|---|"]
    for name, row in r["cells"].items():
        d, n, b = row["direct"], row["now"], row["before"]
        lines.append(f"| {name} | {cell(d)} | {cell(n)} | {cell(b)} | "
                     f"{n['p50_ms'] - d['p50_ms']:.3f} / {b['p50_ms'] - d['p50_ms']:.3f} | "
                     f"{n['p99_ms'] - d['p99_ms']:.3f} / {b['p99_ms'] - d['p99_ms']:.3f} |")
    s = r["stream"]
    lines += ["", "| streams (100 chunks) | time to first chunk p50 / p99 µs | whole answer p50 µs |", "|---|---|---|"]
    for name in ("direct", "now", "before"):
        lines.append(f"| {name} | {s[name]['ttfc_us']['p50']} / {s[name]['ttfc_us']['p99']} | {s[name]['total_us']['p50']} |")
    lines += ["", f"- idle RSS (MB): {r['idle_rss_mb']}", f"- after warm-up (MB): {r['warm_rss_mb']}"]
    for name, sc in r.get("syscalls", {}).items():
        lines.append(f"- {name}: {sc['per_chat']} syscalls per non-streamed chat, gateway + bridge-agent, "
                     f"c=64 ({sc['syscalls']} over {sc['chats']:,} chats, {sc['errors']} errors)")
    for name, lr in r.get("long_run", {}).items():
        lines.append(f"- {name}: a fresh pair after {lr['requests']:,} requests at c=64 ({lr['rps']:,} rps, "
                     f"{lr['errors']} errors): gateway {lr['gateway_rss_mb']:.1f} MB, bridge-agent "
                     f"{lr['bridge_agent_rss_mb']:.1f} MB")
    for name, h in r["held_streams"].items():
        total = sum((x["rss_bytes"] or 0) for x in h["rss"][:2]) / 1e6
        lines.append(f"- {name}: {r['held_count']:,} open streams (failed {h['failed']}, opened in "
                     f"{h['opened_in_ms']} ms): gateway + bridge-agent {total:.1f} MB; "
                     + ", ".join(f"pid {x['pid']} {round((x['rss_bytes'] or 0) / 1e6, 1)} MB" for x in h["rss"]))
    return "\n".join(lines) + "\n"


def leak(results: dict, ours: str, agent, gateway) -> None:
    total = LONG_RUN or (100_000 if QUICK else 1_000_000)
    first = oha(ours, concurrency=64, requests=10_000)
    rss_first = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid)}
    rest = oha(ours, concurrency=64, requests=total - 10_000)
    rss_last = {"gateway": rss_mb(gateway.pid), "bridge-agent": rss_mb(agent.pid)}
    results["leak"] = {"requests": total, "rss_after_10k_mb": rss_first, "rss_after_all_mb": rss_last,
                       "errors": first["errors"] + rest["errors"], "rps": rest["rps"]}
    print(f"leak: {json.dumps(results['leak'])}", flush=True)


# --- allocations per request and per chunk (--allocs) -------------------------------------------
# Each phase length is a separate run of a fresh pair under heaptrack, which counts every call to
# malloc and friends until the process exits. A per-request figure is the difference between two
# runs that differ only in one phase's length, divided by that difference: start-up, the warm-up
# (the tokenizer's tables) and shutdown cancel out.
ALLOC_PLAIN = 2_000 if QUICK else 10_000      # non-streamed chats in the base run
ALLOC_STREAMS = 400 if QUICK else 2_000       # streamed chats in the base run
ALLOC_CHUNKS = (10, 100)                      # content chunks per streamed chat: base, and more
ALLOC_CONCURRENCY = 8


def drive(url: str, *, concurrency: int, body: str, requests=None, seconds=None) -> dict:
    """Load for the cost modes: `concurrency` threads, one keep-alive connection each, sending
    `requests` chats in all or for `seconds`. Those modes count work, not time, so this driver's
    own speed does not matter (and the build needs no oha)."""
    target = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    payload = body.encode()
    lock = threading.Lock()
    state = {"left": requests, "ok": 0, "errors": 0}
    deadline = time.monotonic() + seconds if seconds else None
    connect = lambda: http.client.HTTPConnection(target.hostname, target.port, timeout=120)

    def worker():
        conn = connect()
        while True:
            with lock:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if deadline is None:
                    if state["left"] == 0:
                        break
                    state["left"] -= 1
            try:
                conn.request("POST", target.path, payload, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = connect()
            with lock:
                state["ok" if ok else "errors"] += 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"ok": state["ok"], "errors": state["errors"],
            "rps": round((state["ok"] + state["errors"]) / (time.monotonic() - started), 1)}


def stream_body(chunks: int) -> str:
    # `x_bench_chunks` reaches zero-peer unchanged and sets how many content chunks it sends.
    return json.dumps({"model": MODEL, "stream": True, "x_bench_chunks": chunks,
                       "messages": [{"role": "user", "content": "benchmark"}]})


def content_chunks(url: str, chunks: int) -> int:
    """Sends one streamed chat and counts the content chunks that came back."""
    req = urllib.request.Request(url, data=stream_body(chunks).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode().count('"content":"x"')


def session_member(leader: int, exe: Path):
    """The process running `exe` in the session that `leader` started (a tool wraps the service)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == leader and os.readlink(d / "exe") == str(exe):
                return int(d.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def heaptrack_totals(path: Path) -> dict:
    out = subprocess.run(["heaptrack_print", "-f", str(path), "-p", "0", "-a", "0", "-T", "0"],
                         capture_output=True, text=True, check=True).stdout
    number = lambda label: int(re.search(label + r": (\d+)", out).group(1))
    return {"allocations": number("calls to allocation functions"),
            "temporary": number("temporary memory allocations")}


def alloc_run(tmp: Path, procs: Procs, ours: str, start_pair, name: str, plain: int, streams: int,
              chunks: int) -> dict:
    """One fresh pair under heaptrack: warm-up, `plain` chats, `streams` streamed chats; totals."""
    files = {}

    def heaptrack(service):
        files[service] = tmp / f"heaptrack-{service}-{name}"
        return ["heaptrack", "-o", str(files[service])]

    agent, gateway = start_pair(name, heaptrack)
    for body, n in ((BODY, 500), (stream_body(chunks), 50), (BODY, plain), (stream_body(chunks), streams)):
        r = drive(ours, concurrency=ALLOC_CONCURRENCY, requests=n, body=body)
        if r["errors"] or r["ok"] != n:
            raise SystemExit(f"run.py: allocs run {name}: {r['ok']} of {n} answered, {r['errors']} errors")
    totals = {}
    for service, wrapper in (("gateway", gateway), ("bridge-agent", agent)):
        pid = session_member(wrapper.pid, BUILD / service)
        if pid is None:
            raise SystemExit(f"run.py: allocs run {name}: no {service} process under heaptrack")
        # Only the service: its heaptrack script must outlive it to finish writing the data.
        os.kill(pid, signal.SIGTERM)
        wrapper.wait(timeout=300)
        found = sorted(tmp.glob(files[service].name + ".*"))
        if not found:
            raise SystemExit(f"run.py: allocs run {name}: heaptrack wrote no data for {service}")
        files[service] = found[0]
        totals[service] = {**heaptrack_totals(found[0]), "file": str(found[0])}
    print(f"allocs run {name} (plain {plain}, streams {streams} x {chunks} chunks): "
          f"{json.dumps({k: v['allocations'] for k, v in totals.items()})}", flush=True)
    return totals


OUR_CODE = re.compile(r"\b(gateway|bridge_agent|provider_shared)::")
PLUMBING = ("alloc::", "core::", "std::", "<alloc::", "<core::", "<std::", "__rust", "__rdl", "_ZN", "0x",
            "malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc")


def frame_name(frame: str) -> str:
    # Legacy Rust symbols end in a hash that only makes the table wider.
    return re.sub(r"::h[0-9a-f]{16}", "", frame).strip()


def alloc_sites(tmp: Path, more: str, base: str, per: float, limit: int = 10) -> list:
    """Where the allocations that `more` has beyond `base` come from, per unit of work.

    Each backtrace is named by its innermost frame whose name shows our crate and what it called
    there (toward the allocation, skipping the standard library's plumbing); any other by its
    innermost frame outside that plumbing, with its file."""
    stacks = tmp / "alloc-stacks.txt"
    subprocess.run(["heaptrack_print", "-f", more, "-d", base, "-p", "0", "-T", "0", "-a", "0",
                    "-F", str(stacks), "--flamegraph-cost-type", "allocations"],
                   capture_output=True, text=True, check=True)
    counts = {}
    for line in stacks.read_text().splitlines():
        trace, _, n = line.rpartition(" ")
        frames = [frame_name(f) for f in trace.split(";") if f.strip()]
        if not frames or not n.lstrip("-").isdigit():
            continue
        ours = [i for i, f in enumerate(frames) if OUR_CODE.search(f)]
        notable = lambda f: not f.startswith(PLUMBING)
        if ours:
            callee = next((f for f in frames[ours[-1] + 1:] if notable(f)), None)
            site = frames[ours[-1]] + (f" → {callee}" if callee else "")
        else:
            # heaptrack names many frames without their module path: the file says where.
            site = next((f for f in reversed(frames) if notable(f)), frames[-1])
        counts[site] = counts.get(site, 0) + int(n)
    top = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:limit]
    return [{"site": site, "per": round(n / per, 2)} for site, n in top]


def allocs(tmp: Path, procs: Procs, results: dict, ours: str, start_pair) -> None:
    n, m, (k1, k2) = ALLOC_PLAIN, ALLOC_STREAMS, ALLOC_CHUNKS
    probe_agent, probe_gateway = start_pair("allocs-check")
    seen = content_chunks(ours, k1), content_chunks(ours, k2)
    for p in (probe_gateway, probe_agent):
        p.terminate()
        p.wait(timeout=30)
    if seen != (k1, k2):
        raise SystemExit(f"run.py: streamed chats carried {seen} content chunks, not {(k1, k2)}")
    runs = {
        "base": alloc_run(tmp, procs, ours, start_pair, "base", n, m, k1),
        "plain": alloc_run(tmp, procs, ours, start_pair, "plain", 2 * n, m, k1),
        "streams": alloc_run(tmp, procs, ours, start_pair, "streams", n, 2 * m, k1),
        "chunks": alloc_run(tmp, procs, ours, start_pair, "chunks", n, m, k2),
    }
    figures = {}
    for service in ("gateway", "bridge-agent"):
        total = lambda run: runs[run][service]["allocations"]
        per_chunk = (total("chunks") - total("base")) / (m * (k2 - k1))
        per_stream = (total("streams") - total("base")) / m
        figures[service] = {
            "per_request": round((total("plain") - total("base")) / n, 1),
            f"per_streamed_request_{k1}_chunks": round(per_stream, 1),
            "per_chunk": round(per_chunk, 2),
            "per_streamed_request_besides_chunks": round(per_stream - k1 * per_chunk, 1),
        }
        base = runs["base"][service]["file"]
        figures[service]["sites"] = {"per_request": alloc_sites(tmp, runs["plain"][service]["file"], base, n),
                                     "per_chunk": alloc_sites(tmp, runs["chunks"][service]["file"], base, m * (k2 - k1))}
    results["allocs"] = {
        "method": {"tool": subprocess.run(["heaptrack", "--version"], capture_output=True, text=True).stdout.strip(),
                   "concurrency": ALLOC_CONCURRENCY, "plain": n, "streams": m, "chunks": list(ALLOC_CHUNKS),
                   "runs": {"base": [n, m, k1], "plain": [2 * n, m, k1], "streams": [n, 2 * m, k1],
                            "chunks": [n, m, k2]}},
        "totals": {run: {s: t["allocations"] for s, t in v.items()} for run, v in runs.items()},
        "figures": figures,
    }
    print(f"allocs: {json.dumps(figures)}", flush=True)


# --- where the CPU time goes (--profile) --------------------------------------------------------
PROFILE_SECONDS = 5 if QUICK else 15
PROFILE_TOP = 15


def perf_report(data: Path, children: bool) -> list:
    """perf's top items by self time, or by time including callees; all threads together. The
    inclusive list keeps only functions of ours: above them sit the runtime's and hyper's frames,
    which include everything."""
    argv = ["perf", "report", "-i", str(data), "--stdio", "-g", "none", "--sort", "dso,sym",
            "--percent-limit", "0.5", "--children" if children else "--no-children"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"^\s+([\d.]+)%\s+(?:([\d.]+)%\s+)?(\S+)\s+\[(.)\]\s+(.*?)\s*$")
    rows = []
    for line in out.splitlines():
        if line.startswith("#") or not (m := pattern.match(line)):
            continue
        share, own, dso, _, symbol = m.groups()
        # Legacy Rust symbols end in a hash that only makes the table wider.
        symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
        if children and not re.match(r"<?(gateway|bridge_agent|mcp_bridge|mcp_agent|provider_shared)::", symbol):
            continue
        row = {"share": float(share), "dso": dso, "symbol": symbol}
        if own is not None:
            row["self"] = float(own)
        rows.append(row)
    return rows[:PROFILE_TOP]


def flame_graph(data: Path, svg: Path, title: str) -> bool:
    collapse, flamegraph = TOOLS / "inferno-collapse-perf", TOOLS / "inferno-flamegraph"
    if not (collapse.exists() and flamegraph.exists()):
        return False
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, check=True).stdout
    folded = subprocess.run([str(collapse)], input=script, capture_output=True, check=True).stdout
    svg.write_bytes(subprocess.run([str(flamegraph), "--title", title], input=folded, capture_output=True,
                                   check=True).stdout)
    return True


def profile(tmp: Path, results: dict, ours: str, start_pair) -> None:
    agent, gateway = start_pair("profile")
    sample(tmp, results, ours, {"gateway": gateway.pid, "bridge-agent": agent.pid})


def profile_chain(tmp: Path, procs: Procs, results: dict, start_pair) -> None:
    """The same sampling through the chain (--chain --profile): two agents of mcp-agent serve
    mcp-bridge, and every process of the chain is sampled."""
    ch = start_chain(tmp, procs, "profile", BUILD, start_pair)
    agents = Agents(tmp, procs, "profile", ch, 2)
    agents.wait_polling()
    sample(tmp, results, ch["gateway"], {**ch["pids"], "mcp-agent": agents.proc.pid})


def sample(tmp: Path, results: dict, ours: str, pids: dict) -> None:
    """perf record of each process in `pids` while `ours` is driven at c=64."""
    drive(ours, concurrency=8, requests=500, body=BODY)  # warm-up: connections, tokenizer
    load_result = {}
    load = threading.Thread(target=lambda: load_result.update(
        drive(ours, concurrency=64, seconds=PROFILE_SECONDS + 4, body=BODY)))
    load.start()
    time.sleep(2)  # the load reaches its pace before sampling starts
    records = {}
    for service, pid in pids.items():
        data = tmp / f"perf-{service}.data"
        log = open(tmp / f"perf-{service}.log", "w")
        # cpu-clock: a software event, since this machine has no hardware counters; DWARF call
        # graphs, since release code keeps no frame pointers.
        records[service] = data, subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf", "-p", str(pid),
             "-o", str(data), "--", "sleep", str(PROFILE_SECONDS)], stdout=log, stderr=log)
    for service, (data, rec) in records.items():
        if rec.wait() != 0 or not data.exists():
            raise SystemExit(f"run.py: perf record of {service} failed: see {tmp}/perf-{service}.log")
    load.join()
    if load_result["errors"]:
        raise SystemExit(f"run.py: the load for the profile had {load_result['errors']} errors")
    results["profile"] = {"seconds": PROFILE_SECONDS, "concurrency": 64, "event": "cpu-clock, 499 Hz, DWARF call graphs",
                          "rps_while_sampled": load_result["rps"], "services": list(pids)}
    for service, (data, _) in records.items():
        svg = OUT_DIR / f"{STAMP}-{service}.svg"
        results["profile"][service] = {
            "self": perf_report(data, children=False),
            "inclusive": perf_report(data, children=True),
            "flame_graph": str(svg.relative_to(REPO)) if flame_graph(data, svg, f"{service}, c=64") else None,
        }
    print(f"profile: {json.dumps({s: results['profile'][s]['self'][:5] for s in records})}", flush=True)


def render(r: dict) -> str:
    parts = []
    if "concurrency" in r:
        parts.append(render_main(r))
    elif "leak" in r:
        leak = r["leak"]
        parts.append(f"RSS after 10k requests {leak['rss_after_10k_mb']}, after {leak['requests']:,}: "
                     f"{leak['rss_after_all_mb']} ({leak['errors']} errors, {leak['rps']:,} rps)\n")
    if "chain" in r:
        parts.append(render_chain(r["chain"]))
    if "compare" in r:
        parts.append(render_compare(r["compare"]))
    if "allocs" in r:
        parts.append(render_allocs(r["allocs"]))
    if "profile" in r:
        parts.append(render_profile(r["profile"]))
    return "\n".join(parts)


def render_allocs(a: dict) -> str:
    m = a["method"]
    k1, k2 = m["chunks"]
    lines = ["## Allocations (calls to malloc and friends, counted by heaptrack)", "",
             f"Differences between runs of a fresh pair at c={m['concurrency']}: {m['plain']:,} more chats, "
             f"{m['streams']:,} more streamed chats of {k1} chunks, or the same streams with {k2} chunks instead.", "",
             f"| service | per chat | per streamed chat ({k1} chunks) | per chunk | per streamed chat besides its chunks |",
             "|---|---|---|---|---|"]
    for service, f in a["figures"].items():
        lines.append(f"| {service} | {f['per_request']} | {f[f'per_streamed_request_{k1}_chunks']} | "
                     f"{f['per_chunk']} | {f['per_streamed_request_besides_chunks']} |")
    lines += ["", "Run totals: " + "; ".join(f"{run} {t}" for run, t in a["totals"].items())]
    for service, f in a["figures"].items():
        for unit, sites in f["sites"].items():
            lines += ["", f"### {service}: where the allocations {unit.replace('_', ' ')} come from", "",
                      "| allocations | innermost named function (file) → what it called |", "|---|---|"]
            lines += [f"| {x['per']} | `{x['site'][:160]}` |" for x in sites]
    return "\n".join(lines) + "\n"


def render_profile(p: dict) -> str:
    lines = [f"## Profile (perf, {p['event']}, {p['seconds']} s at c={p['concurrency']}, "
             f"{p['rps_while_sampled']:,} rps while sampled)"]
    short = lambda s: s if len(s) <= 110 else s[:107] + "..."
    for service in p.get("services", ("gateway", "bridge-agent")):
        q = p[service]
        lines += ["", f"### {service}" + (f" (flame graph: {q['flame_graph']})" if q["flame_graph"] else ""), "",
                  "| self % | where | function |", "|---|---|---|"]
        lines += [f"| {x['share']} | {x['dso']} | `{short(x['symbol'])}` |" for x in q["self"]]
        lines += ["", "| with callees % | self % | where | function of ours |", "|---|---|---|---|"]
        lines += [f"| {x['share']} | {x.get('self', '')} | {x['dso']} | `{short(x['symbol'])}` |" for x in q["inclusive"]]
    return "\n".join(lines) + "\n"


def render_main(r: dict) -> str:
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
