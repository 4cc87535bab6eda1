#!/usr/bin/env python3
"""The gateway's memory with one client that stops reading a 160 MB streamed answer.

Starts the scripted peer, bridge-agent and the gateway from target/<profile>/ on free ports,
answers one ordinary chat (the tokenizer loads on first use), opens one streamed chat whose answer is 40,000 chunks of 4 KiB, reads nothing (a 4 KiB receive
buffer), samples the gateway's RSS until the request ends with slow_client, closes the client and
samples again. Usage: bench/slow_reader.py [release|debug]. Prints one JSON object.
"""
import json
import os
import socket
import sys
import time
import urllib.request

from procs import Services, free_port, wait

KEY = "bench-key-0123456789abcdef0123456789abcdef"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    profile = sys.argv[1] if len(sys.argv) > 1 else "release"
    peer_port, gw_port, agent_port = free_port(), free_port(), free_port()
    with Services(profile, "slow-reader-") as services:
        sock = os.path.join(services.tmp, "bridge.sock")
        audit = os.path.join(services.tmp, "audit.log")
        services.start("scripted-peer", {"SCRIPTED_PEER_PORT": str(peer_port)})
        services.start("bridge-agent", {"LOCAL_PROVIDER_MCP_BRIDGE_URL": f"ws://127.0.0.1:{peer_port}",
                                        "LOCAL_PROVIDER_BRIDGE_SOCKET": sock,
                                        "LOCAL_PROVIDER_BRIDGE_AGENT_PORT": str(agent_port),
                                        "LOCAL_PROVIDER_RESPONSE_TIMEOUT": "600"})
        gateway = services.start("gateway", {"LOCAL_PROVIDER_PORT": str(gw_port),
                                             "LOCAL_PROVIDER_API_KEY": KEY,
                                             "LOCAL_PROVIDER_BRIDGE_SOCKET": sock,
                                             "LOCAL_PROVIDER_AUDIT_LOG": audit,
                                             "LOCAL_PROVIDER_RESPONSE_TIMEOUT": "600"})
        health = f"http://127.0.0.1:{gw_port}/health"
        wait(lambda: json.load(urllib.request.urlopen(health, timeout=2))["status"] == "healthy",
             "a healthy gateway")
        # One ordinary chat first: the tokenizer loads on first use, and is not what is measured.
        warm = urllib.request.Request(
            f"http://127.0.0.1:{gw_port}/v1/chat/completions", method="POST",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            data=json.dumps({"model": "cursor-agent-local",
                             "messages": [{"role": "user", "content": "warm up"}]}).encode())
        urllib.request.urlopen(warm, timeout=30).read()
        time.sleep(1)
        before = rss_mib(gateway.pid)

        body = json.dumps({"model": "cursor-agent-local", "stream": True,
                           "messages": [{"role": "user", "content": "[[bulk:40000]]"}]}).encode()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", gw_port))
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
                       b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                       b"Content-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        started = time.monotonic()
        peak = before

        def cut_off() -> bool:
            nonlocal peak
            peak = max(peak, rss_mib(gateway.pid))
            return os.path.exists(audit) and '"slow_client"' in open(audit).read()

        wait(cut_off, "slow_client", timeout=120)
        cut_after = time.monotonic() - started
        for _ in range(10):
            peak = max(peak, rss_mib(gateway.pid))
            time.sleep(0.1)
        client.close()
        time.sleep(2)
        after = rss_mib(gateway.pid)
        print(json.dumps({"profile": profile, "gateway_rss_mib": {
            "before": round(before, 1), "peak_during": round(peak, 1), "after": round(after, 1)},
            "growth_mib": round(peak - before, 1), "after_minus_before_mib": round(after - before, 1),
            "slow_client_after_s": round(cut_after, 2)}))


if __name__ == "__main__":
    main()
