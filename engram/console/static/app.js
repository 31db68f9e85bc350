// Engram console: three pages over /api/console/*, hand-drawn SVG charts, no dependencies.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const PALETTE = ["#3d5afe", "#16a085", "#e67e22", "#8e44ad", "#d93a3a", "#2c82c9",
                 "#c0392b", "#27ae60", "#b7950b", "#7f8c8d"];
const colour = (uid) => PALETTE[uid % PALETTE.length];
const SVG = "http://www.w3.org/2000/svg";
const SS58 = /\b5[1-9A-HJ-NP-Za-km-z]{47}\b/g;  // hotkeys, shortened in the event feed

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  return Number(x).toFixed(digits);
}
const short = (s, n = 10) => (s && s.length > n + 4 ? `${s.slice(0, n)}…${s.slice(-4)}` : s || "");
const clock = (t) => new Date(t * 1000).toISOString().slice(11, 19);
const bytes = (n) => {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
};

let errorTimer = null;
function showError(text) {
  const box = $("#error");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

async function api(path, options = {}) {
  const resp = await fetch(path, options);
  let body;
  try { body = await resp.json(); } catch { body = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

// --- charts ----------------------------------------------------------------------------

// series: [{name, colour, points: [[x, y], ...]}]; x is time (s) or an epoch number
function lineChart(target, series, { yMin = null, yMax = null, xIsTime = true, digits = 2 } = {}) {
  while (target.firstChild) target.removeChild(target.firstChild);
  const W = target.clientWidth || 480, H = target.clientHeight || 190;
  target.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const pad = { l: 44, r: 12, t: 10, b: 24 };
  const all = series.flatMap((s) => s.points).filter((p) => p[1] !== null && p[1] !== undefined);
  if (!all.length) {
    target.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
      "waiting for the validator's first rounds…"));
    return;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = yMin ?? Math.min(...all.map((p) => p[1])), y1 = yMax ?? Math.max(...all.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y1 = y0 + 1; }
  if (yMax === null) y1 += (y1 - y0) * 0.08;
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (W - pad.l - pad.r);
  const Y = (y) => H - pad.b - ((y - y0) / (y1 - y0)) * (H - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4, y = Y(v);
    target.append(svg("line", { x1: pad.l, x2: W - pad.r, y1: y, y2: y, class: i ? "gridline" : "axis" }));
    target.append(svg("text", { x: pad.l - 6, y: y + 3.5, "text-anchor": "end" }, v.toFixed(digits)));
  }
  const ticks = 4;
  for (let i = 0; i <= ticks; i++) {
    const v = x0 + ((x1 - x0) * i) / ticks;
    const label = xIsTime ? clock(v) : `#${Math.round(v)}`;
    target.append(svg("text", { x: X(v), y: H - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" }, label));
  }
  for (const s of series) {
    const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (!pts.length) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    const path = svg("path", { d, class: "series", stroke: s.colour });
    path.append(svg("title", {}, s.name));
    target.append(path);
    const last = pts[pts.length - 1];
    target.append(svg("circle", { cx: X(last[0]), cy: Y(last[1]), r: 3, fill: s.colour }));
  }
}

// --- router ----------------------------------------------------------------------------

const pages = {};
let current = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "network";
  const [name, ...rest] = hash.split("/");
  const page = pages[name] ? name : "network";
  if (current && current !== page && pages[current].leave) pages[current].leave();
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${page}`;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === page || (page === "cid" && a.dataset.page === "memory"));
  }
  current = page;
  pages[page].enter(decodeURIComponent(rest.join("/")));
}

function every(ms, fn) {
  let stopped = false, timer = null;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (e) { showError(e.message); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

function card(label, value, cls = "") {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }),
    el("div", { class: `value ${cls}`, text: value }));
}

// --- Network ---------------------------------------------------------------------------

pages.network = {
  enter() { this.stop = every(3000, () => this.refresh()); },
  leave() { this.stop && this.stop(); },
  async refresh() {
    const [net, hist] = await Promise.all([api("/api/console/network"), api("/api/console/network/history")]);
    const rep = net.replication || {};
    const scored = net.miners.filter((m) => m.score !== null);
    const best = scored.length ? Math.max(...scored.map((m) => m.score)) : null;
    $("#net-cards").replaceChildren(
      card("miners", net.miners.length),
      card("weight sets", net.weight_sets),
      card("best score", fmt(best)),
      card("healthy CIDs", rep.HEALTHY ?? 0, "ok"),
      card("at risk", (rep.DEGRADED ?? 0) + (rep.CRITICAL ?? 0) + (rep.LOST ?? 0),
        (rep.CRITICAL || rep.LOST) ? "bad" : ""),
      card("validation events", net.validation_events),
    );
    const body = $("#miners tbody");
    body.replaceChildren(...net.miners.map((m) => {
      const state = m.slashed
        ? el("span", { class: "badge bad", title: m.reason, text: "slashed" })
        : m.score === null ? el("span", { class: "badge", text: "new" }) : el("span", { class: "badge ok", text: "ok" });
      const role = m.label ? el("span", { class: m.label === "honest" ? "badge role" : "badge warn", text: m.label }) : "";
      return el("tr", { "data-uid": m.uid },
        el("td", {}, el("span", { class: "swatch", style: `background:${colour(m.uid)}` }), m.uid),
        el("td", { class: "mono hotkey", title: m.hotkey, text: m.hotkey }),
        el("td", {}, role),
        el("td", { class: "num", text: fmt(m.recall, 2) }),
        el("td", { class: "num", text: m.latency_ms === null ? "–" : `${m.latency_ms.toFixed(0)} ms` }),
        el("td", { class: "num", text: `${m.proofs_passed}/${m.proofs}` }),
        el("td", { class: "num score", text: fmt(m.score) }),
        el("td", { class: "num", text: fmt(m.weight) }),
        el("td", {}, state));
    }));
    const total = Object.values(rep).reduce((a, b) => a + b, 0);
    $("#rep-note").textContent = `${total} routed CIDs with proofs`;
    const bar = el("div", { class: "repbar" });
    const legend = el("div", { class: "replegend" });
    for (const status of ["HEALTHY", "DEGRADED", "CRITICAL", "LOST"]) {
      const n = rep[status] || 0;
      if (n) bar.append(el("div", { class: status, style: `flex:${n}`, title: `${status} ${n}`, text: n }));
      legend.append(el("span", {}, el("span", { class: `swatch ${status}` }), `${status.toLowerCase()} ${n}`));
    }
    $("#replication").replaceChildren(bar, legend);
    const rows = Object.entries(hist).map(([uid, h]) => ({ uid: Number(uid), ...h }));
    const series = (key) => rows.map((r) => ({
      name: `uid ${r.uid}`, colour: colour(r.uid), points: r.history.map((p) => [p.t, p[key]]),
    }));
    lineChart($("#chart-score"), series("score"), { yMin: 0, yMax: 1 });
    lineChart($("#chart-recall"), series("recall"), { yMin: 0, yMax: 1 });
    lineChart($("#chart-proof"), series("proof_rate"), { yMin: 0, yMax: 1 });
    lineChart($("#chart-latency"), series("latency_ms"), { yMin: 0, digits: 0 });
    lineChart($("#chart-weight"), rows.map((r) => ({
      name: `uid ${r.uid}`, colour: colour(r.uid), points: r.weights.map((p) => [p.t, p.weight]),
    })), { yMin: 0 });
    $("#legend").replaceChildren(...rows.map((r) => el("div", { class: "legend-item" },
      el("span", { class: "swatch", style: `background:${colour(r.uid)}` }),
      el("span", {}, `uid ${r.uid}`), el("span", { class: "muted mono", text: short(r.hotkey, 12) }),
      r.label ? el("span", { class: "muted", text: r.label }) : "")));
  },
};

// --- Bus -------------------------------------------------------------------------------

pages.bus = {
  enter() {
    this.stop = every(2000, () => this.refresh());
    this.list = $("#events");
    this.seen = 0;
    this.times = [];
    this.source = new EventSource("/api/console/events/stream");
    this.source.onmessage = (m) => this.add(JSON.parse(m.data));
    this.source.onerror = () => { $("#conn").classList.remove("live"); };
    this.source.onopen = () => { $("#conn").classList.add("live"); };
  },
  leave() { this.stop && this.stop(); this.source && this.source.close(); },
  add(ev) {
    if (ev.id <= this.seen) return;
    this.seen = ev.id;
    this.times.push(Date.now());
    const row = el("div", { class: "ev" }, el("span", { class: "muted", text: clock(ev.time) }),
      el("span", { class: "kind", text: ev.kind }),
      el("span", { class: "sum", title: `${ev.subject}  ${ev.summary}`, text: ev.summary.replace(SS58, (k) => short(k, 6)) }));
    this.list.prepend(row);
    while (this.list.childElementCount > 200) this.list.lastChild.remove();
  },
  async refresh() {
    const [bus, dlq] = await Promise.all([api("/api/console/bus"), api("/api/console/dlq")]);
    const now = Date.now();
    this.times = this.times.filter((t) => now - t < 10000);
    $("#ev-rate").textContent = `${(this.times.length / 10).toFixed(1)} events/s`;
    const msgs = bus.streams.reduce((a, s) => a + s.messages, 0);
    const size = bus.streams.reduce((a, s) => a + s.bytes, 0);
    const lag = bus.consumers.reduce((a, c) => a + c.lag, 0);
    $("#bus-cards").replaceChildren(
      card("streams", bus.streams.length), card("messages", msgs), card("stored", bytes(size)),
      card("consumer lag", lag, lag ? "bad" : "ok"), card("DLQ depth", bus.dlq.depth, bus.dlq.depth ? "bad" : "ok"),
      card("NATS", bus.nats.version || "–"),
    );
    $("#streams tbody").replaceChildren(...bus.streams.map((s) => el("tr", {},
      el("td", { class: "mono", text: s.name }), el("td", { class: "num", text: s.messages }),
      el("td", { class: "num", text: bytes(s.bytes) }), el("td", { class: "num", text: s.last_seq }),
      el("td", { class: "num", text: s.consumers }), el("td", { class: "muted", text: s.leader || "standalone" }))));
    const maxLag = Math.max(1, ...bus.consumers.map((c) => c.lag));
    $("#consumers tbody").replaceChildren(...bus.consumers.map((c) => el("tr", {},
      el("td", { class: "mono", text: c.name }), el("td", { class: "muted", text: c.stream }),
      el("td", { class: "num" }, String(c.lag),
        c.lag ? el("span", { class: "lagbar", style: `width:${Math.max(4, (60 * c.lag) / maxLag)}px` }) : ""),
      el("td", { class: "num", text: c.ack_pending }), el("td", { class: "num", text: c.redelivered }))));
    $("#dlq-depth").textContent = dlq.depth;
    $("#dlq-depth").className = `badge ${dlq.depth ? "bad" : "ok"}`;
    const rows = dlq.entries.map((d) => el("tr", {},
      el("td", { class: "num", text: d.seq }),
      el("td", {}, el("span", { class: `badge ${d.status === "dead" ? "bad" : "ok"}`, text: d.status })),
      el("td", { class: "muted", text: clock(d.time) }), el("td", { class: "mono", text: d.consumer }),
      el("td", { class: "mono", text: `${d.original_subject} (${d.stream}:${d.stream_seq})` }),
      el("td", { text: `${d.error_type}: ${d.error}` })));
    $("#dlq tbody").replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No dead letters. Every event was handled." }))]));
  },
};

// --- Memory ----------------------------------------------------------------------------

pages.memory = {
  async enter() {
    const net = await api("/api/console/network").catch(() => ({ miners: [] }));
    const select = $("#q-miner");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "best-scored miner" }),
      ...net.miners.filter((m) => m.axon).map((m) => el("option", { value: m.uid, text: `uid ${m.uid} · ${short(m.hotkey, 8)}` })));
    select.value = chosen;
    $("#q-text").focus();
  },
};

async function runQuery(event) {
  event.preventDefault();
  const button = $("#q-go");
  button.disabled = true;
  const uid = $("#q-miner").value;
  const body = { text: $("#q-text").value, top_k: Number($("#q-topk").value || 5) };
  if (uid !== "") body.uid = Number(uid);
  try {
    const out = await api("/api/console/query", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    $("#q-meta").textContent = `${out.results.length} hits from miner uid ${out.miner.uid} (${short(out.miner.hotkey, 8)}) · ` +
      `${fmt(out.miner_latency_ms, 1)} ms at the miner, ${fmt(out.round_trip_ms, 1)} ms round trip`;
    const top = Math.max(1e-9, ...out.results.map((h) => h.score));
    $("#q-results").replaceChildren(...out.results.map((h, i) => el("div", { class: "hit" },
      el("div", { class: "rank", text: `#${i + 1}` }),
      el("div", {}, el("div", { class: "mono score", text: h.score.toFixed(4) }),
        el("div", { class: "scorebar" }, el("div", { style: `width:${Math.max(2, (100 * h.score) / top)}%` }))),
      el("div", {}, el("a", { class: "mono cid", href: `#/cid/${h.cid}`, text: h.cid }),
        el("div", { class: "chips" }, ...Object.entries(h.metadata || {}).map(([k, v]) =>
          el("span", { class: "chip" }, el("b", { text: `${k}: ` }), typeof v === "string" ? v : JSON.stringify(v))))))));
    if (!out.results.length) $("#q-results").replaceChildren(el("p", { class: "muted", text: "No hits." }));
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

// --- CID -------------------------------------------------------------------------------

pages.cid = {
  // live like the other pages: proofs and verdicts appear as the validator samples the CID
  enter(cid) {
    this.leave();
    for (const id of ["#cid-ids tbody", "#cid-assigned tbody", "#cid-proofs tbody"]) $(id).replaceChildren();
    $("#cid-record").replaceChildren(el("p", { class: "muted", text: "loading…" }));
    this.stop = every(4000, () => this.refresh(cid));
  },
  leave() { this.stop && this.stop(); this.stop = null; },
  async refresh(cid) {
    let d;
    try { d = await api(`/api/console/cid/${encodeURIComponent(cid)}`); } catch (e) {
      $("#cid-record").replaceChildren(el("p", { class: "fail", text: e.message }));
      return;
    }
    if (location.hash !== `#/cid/${cid}` && location.hash !== `#/cid/${encodeURIComponent(cid)}`) return;
    const st = $("#cid-status");
    st.textContent = d.status || "not yet proven";
    st.className = `badge ${d.status === "HEALTHY" ? "ok" : d.status === "LOST" || d.status === "CRITICAL" ? "bad" : "warn"}`;
    const kv = [["CID", d.cid], ["version", d.version], ["digest", d.digest], ["digest of", d.digest_algorithm],
                ["routing key", d.routing_key], ["routing key of", d.routing_key_algorithm]];
    $("#cid-ids tbody").replaceChildren(...kv.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { class: "mono", text: v }))));
    $("#cid-assigned tbody").replaceChildren(...d.assigned.map((a) => el("tr", {},
      el("td", { text: a.uid }), el("td", { class: "mono", title: a.hotkey, text: short(a.hotkey, 14) }),
      el("td", { text: a.label || "" }),
      el("td", {}, a.verdict === null || a.verdict === undefined ? el("span", { class: "muted", text: "not sampled yet" })
        : el("span", { class: a.verdict ? "pass" : "fail", text: a.verdict ? "passed" : "failed" })))));
    if (d.record) {
      const r = d.record;
      const rows = [["held by", `uid ${r.from_uid}`], ["namespace", r.namespace], ["model", r.model_version], ["dimensions", r.dim]];
      if (r.text) rows.push(["text", r.text]);
      $("#cid-record").replaceChildren(el("table", { class: "kv" }, el("tbody", {},
        ...rows.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: v }))),
        el("tr", {}, el("td", { text: "metadata" }), el("td", {}, el("div", { class: "chips" },
          ...Object.entries(r.metadata).map(([k, v]) => el("span", { class: "chip" }, el("b", { text: `${k}: ` }), JSON.stringify(v)))))))));
    } else {
      $("#cid-record").replaceChildren(el("p", { class: "muted", text: "No miner returned this CID." }));
    }
    const proofs = d.proofs.map((p) => el("tr", {},
      el("td", { class: "muted", text: clock(p.time) }), el("td", { text: p.kind }), el("td", { text: p.uid }),
      el("td", { class: "mono", text: short(p.hotkey, 10) }),
      el("td", {}, p.passed === undefined ? "" : p.void ? el("span", { class: "muted", text: "void" })
        : el("span", { class: p.passed ? "pass" : "fail", text: p.passed ? "passed" : "failed" })),
      el("td", { class: "muted", text: p.reason || p.round || "" })));
    $("#cid-proofs tbody").replaceChildren(...(proofs.length ? proofs
      : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No challenge has sampled this CID yet." }))]));
  },
};

// --- start -----------------------------------------------------------------------------

$("#query-form").addEventListener("submit", runQuery);
$("#cid-form").addEventListener("submit", (e) => {
  e.preventDefault();
  location.hash = `#/cid/${$("#cid-text").value.trim()}`;
});
window.addEventListener("hashchange", route);
api("/api/console/overview").then((o) => {
  $("#conn").textContent = `NATS ${o.nats}`;
  $("#conn").classList.add("live");
  document.title = `${o.title} console`;
}).catch((e) => showError(e.message));
route();
