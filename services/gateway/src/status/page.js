"use strict";
// Draws /status.json every 2 s. Data goes in with textContent only, never as markup.
(function () {
  const REFRESH_MS = 2000;
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("status-token") || "";

  function words(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function setLink(id, link) {
    const el = $(id);
    el.dataset.state = link.state;
    el.querySelector(".pill").textContent = link.state;
    el.querySelector(".detail").textContent = link.detail || "";
  }

  function cell(row, text, mono) {
    const td = document.createElement("td");
    td.textContent = text;
    if (mono) td.className = "mono";
    row.appendChild(td);
  }

  function fillTable(id, rows, toCells) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      toCells(r).forEach(([text, mono]) => cell(tr, text, mono));
      body.appendChild(tr);
    }
    $(id + "-empty").hidden = rows.length > 0;
    $(id).hidden = rows.length === 0;
  }

  function plot(id, points, value, now) {
    const svg = $(id);
    const NS = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const W = 300, H = 80, SPAN = 15 * 60 * 1000;
    const vals = points.map(value).filter((v) => v !== null && v !== undefined);
    const max = Math.max(1, ...vals);
    const x = (t) => W - ((now - t) / SPAN) * W;
    const y = (v) => H - 2 - (v / max) * (H - 14);
    const base = document.createElementNS(NS, "line");
    base.setAttribute("class", "axis");
    base.setAttribute("x1", "0"); base.setAttribute("x2", String(W));
    base.setAttribute("y1", String(H - 1)); base.setAttribute("y2", String(H - 1));
    svg.appendChild(base);
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", "2"); label.setAttribute("y", "9");
    label.textContent = "max " + (max >= 10 ? Math.round(max) : Math.round(max * 100) / 100);
    svg.appendChild(label);
    let d = "", first = null, last = null;
    for (const p of points) {
      const v = value(p);
      if (v === null || v === undefined || now - p.at_ms > SPAN) continue;
      const px = x(p.at_ms).toFixed(1), py = y(v).toFixed(1);
      d += (d ? " L" : "M") + px + " " + py;
      if (first === null) first = px;
      last = px;
    }
    if (!d) return;
    // The newest point as a dot, so a single point shows too.
    const dot = document.createElementNS(NS, "circle");
    dot.setAttribute("class", "dot");
    dot.setAttribute("cx", last);
    dot.setAttribute("cy", d.split(" ").pop());
    dot.setAttribute("r", "2.5");
    svg.appendChild(dot);
    const area = document.createElementNS(NS, "path");
    area.setAttribute("class", "area");
    area.setAttribute("d", d + " L" + last + " " + H + " L" + first + " " + H + " Z");
    svg.appendChild(area);
    const line = document.createElementNS(NS, "path");
    line.setAttribute("class", "line");
    line.setAttribute("d", d);
    svg.appendChild(line);
  }

  function render(s) {
    document.body.classList.remove("stale");
    $("meta").textContent = "v" + s.version + " · model " + s.model + " · up " + words(s.uptime_seconds * 1000) +
      " · updated " + new Date(s.generated_at_ms).toLocaleTimeString();
    $("agent").dataset.state = s.agent.state;
    $("agent-summary").textContent = s.agent.summary;
    setLink("link-editor", s.chain.editor_to_gateway);
    setLink("link-bridge-agent", s.chain.gateway_to_bridge_agent);
    setLink("link-mcp-bridge", s.chain.bridge_agent_to_mcp_bridge);
    setLink("link-agent", s.chain.mcp_bridge_to_agent);
    const q = s.queue;
    $("queue-depth").textContent = q ? String(q.depth) + (q.stale ? " (stale)" : "") : "unknown";
    $("queue-leased").textContent = q ? String(q.leased) : "unknown";
    $("answered").textContent = q ? q.answered + " / " + q.failed : "unknown";
    $("in-flight-count").textContent = String(s.in_flight_total);
    $("sessions").textContent = s.sessions.active === null ? "unknown" : String(s.sessions.active);
    $("rate-limit-hits").textContent = String(s.rate_limits.hits_total);
    // Every 4xx since start, by code (the gateway's log has each one, repeats counted).
    $("refused-total").textContent = String(s.refusals.total);
    $("refused-codes").textContent = Object.entries(s.refusals.by_code)
      .sort((a, b) => b[1] - a[1]).map(([code, n]) => code + " " + n).join(" · ");
    // The audit writer's figures (its queue, dropped lines, rotations), as `name value` pairs.
    $("audit-value").textContent = s.audit === null || typeof s.audit !== "object" ? "not reported"
      : Object.entries(s.audit).map(([k, v]) => k.replace(/_/g, " ") + " " +
          (typeof v === "object" ? JSON.stringify(v) : v)).join(" · ");
    fillTable("in-flight", s.in_flight, (r) => [
      [r.request_id, true], [r.kind], [r.stream ? "yes" : "no"], [r.client, true],
      [words(r.age_ms)], [r.first_chunk_ms === null ? "waiting" : r.first_chunk_ms + " ms"],
    ]);
    fillTable("errors", s.recent_errors.slice(0, 20), (e) => [
      [new Date(e.at_ms).toLocaleTimeString()], [e.route, true], [String(e.status)], [e.code, true],
    ]);
    const pts = s.history.points, now = s.generated_at_ms;
    plot("plot-rps", pts, (p) => p.requests_per_second, now);
    plot("plot-ttfc", pts, (p) => p.ttfc_ms_avg, now);
    plot("plot-queue", pts, (p) => p.queue_depth, now);
    const lastPt = pts.length ? pts[pts.length - 1] : null;
    $("plot-rps-now").textContent = lastPt ? "now " + lastPt.requests_per_second.toFixed(1) : "";
    $("plot-ttfc-now").textContent = lastPt && lastPt.ttfc_ms_avg !== null ? "now " + Math.round(lastPt.ttfc_ms_avg) : "";
    $("plot-queue-now").textContent = lastPt && lastPt.queue_depth !== null ? "now " + lastPt.queue_depth : "";
  }

  function down(why) {
    document.body.classList.add("stale");
    $("meta").textContent = why;
    setLink("link-editor", { state: "down", detail: why });
  }

  async function refresh() {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    try {
      const res = await fetch("/status.json", { headers, cache: "no-store" });
      if (res.status === 401 || res.status === 403) {
        const body = await res.json().catch(() => ({}));
        $("token-why").textContent = (body.error && body.error.message) || "this page needs the admin token";
        $("token-form").hidden = false;
        return;
      }
      if (!res.ok) throw new Error("HTTP " + res.status);
      $("token-form").hidden = true;
      render(await res.json());
    } catch (err) {
      down("the gateway is not answering (" + err.message + ")");
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("status-token", token);
    $("token-form").hidden = true;
  });
  refresh();
})();
