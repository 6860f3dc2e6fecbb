"""The dashboard's single page: inline CSS and JS, no fetch but its own `api/status`.

Kept apart from the server so the markup can be read as markup. Every value from the
bot (reasons carry operator text) goes into the page through `textContent`, never as
HTML. The server sends a Content-Security-Policy allowing exactly these two inline
blocks (by hash, see `csp()`) and requests to its own origin only.
"""
from __future__ import annotations

import base64
import hashlib

#: How often the page polls api/status, milliseconds.
POLL_MS = 2000

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{display:flex;gap:1em;align-items:center;flex-wrap:wrap;padding:.8em 1.2em;background:#1d2330;color:#fff}
header h1{font-size:1.1em;margin:0}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1em;padding:1em}
section{background:#fff;border-radius:6px;padding:.8em 1em;box-shadow:0 1px 2px #0002}
h2{font-size:1em;margin:.2em 0 .6em}
table{border-collapse:collapse;width:100%}
td,th{padding:.25em .4em;text-align:right;border-bottom:1px solid #eee;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
.state{font-weight:700;padding:.2em .7em;border-radius:4px;background:#888}
.ACTIVE{background:#1f8f4e}.REDUCING{background:#c98a00}.HALTED{background:#c0392b}.KILLED{background:#5b0f0f}
.bar{background:#e8eaee;border-radius:3px;height:.8em;min-width:8em;position:relative}
.fill{height:100%;border-radius:3px;background:#1f8f4e}
.warn .fill{background:#c98a00}.hot .fill{background:#c0392b}
.muted{color:#8a93a3}#conn.down{color:#ffb3a7;font-weight:700}
svg{width:100%;height:170px}
"""

SCRIPT = """
const POLL_MS = %(poll)d;
const LABELS = {
  daily_loss_pct: "Daily loss (%%)", drawdown_pct: "Drawdown (%%)", consecutive_losses: "Loss streak (trades)",
  total_exposure: "Exposure (quote)", orders_per_minute_throttle: "Order rate (orders/min, throttle)",
  orders_per_minute: "Orders/min (breaker)", rejects_per_minute: "Rejects/min (breaker)",
  cancels_per_minute: "Cancels/min (breaker)", open_positions: "Open positions",
  equity_floor_cushion: "Equity floor cushion (quote)", data_age_s: "Market data age (s)"};
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmt(x) {
  const n = Number(x);
  if (!Number.isFinite(n)) return String(x);
  return Number.isInteger(n) ? String(n) : n.toFixed(Math.abs(n) >= 100 ? 2 : 4);
}
function label(name) {
  if (name.startsWith("volatility_z:")) return "Volatility z-score " + name.slice(13);
  return LABELS[name] || name;
}
function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map((it) => {
    const tr = el("tr");
    cells(it).forEach((c) => tr.append(el("td", c)));
    return tr;
  }));
  if (!items.length) { const tr = el("tr"); const td = el("td", "none", "muted"); td.colSpan = 9; tr.append(td); tbody.append(tr); }
}
function limits(list) {
  $("limits").replaceChildren(...list.map((u) => {
    const tr = el("tr");
    tr.dataset.limit = u.name;
    const pct = Math.max(0, Math.min(100, Number(u.pct)));
    const bar = el("div", null, "bar" + (pct >= 80 ? " hot" : pct >= 50 ? " warn" : ""));
    const fill = el("div", null, "fill");
    fill.style.width = pct + "%%";
    bar.append(fill);
    const tdBar = el("td"); tdBar.append(bar);
    tr.append(el("td", label(u.name), "name"), tdBar, el("td", fmt(u.used), "used"),
              el("td", fmt(u.limit), "limit"), el("td", Number(u.pct).toFixed(1) + "%%", "pct"));
    return tr;
  }));
}
function curve(points) {
  const svg = $("equity"), ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (points.length < 2) { $("equity-range").textContent = "collecting points..."; return; }
  const ts = points.map((p) => p[0]), eq = points.map((p) => p[1]);
  const t0 = Math.min(...ts), t1 = Math.max(...ts), lo = Math.min(...eq), hi = Math.max(...eq);
  const W = 600, H = 160, sx = (t) => (t1 > t0 ? (t - t0) / (t1 - t0) : 0) * W;
  const sy = (v) => H - 5 - (hi > lo ? (v - lo) / (hi - lo) : 0.5) * (H - 10);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#2563eb"); line.setAttribute("stroke-width", "2");
  svg.append(line);
  $("equity-range").textContent = "low " + fmt(lo) + " · high " + fmt(hi) + " · last " + fmt(eq[eq.length - 1]) +
    " · " + points.length + " points over " + Math.round(t1 - t0) + " s";
}
function render(s) {
  const st = $("state");
  st.textContent = s.state; st.className = "state " + s.state;
  $("reason").textContent = s.reason;
  $("since").textContent = "since " + s.since;
  $("equity-now").textContent = s.equity;
  $("exposure-now").textContent = s.exposure;
  limits(s.limits || []);
  curve(s.equity_curve || []);
  rows($("positions"), s.positions || [], (p) => [p.instrument, p.qty, p.avg_price, p.last, p.unrealized, p.stop ?? "-"]);
  rows($("orders"), s.open_orders || [], (o) => [o.client_order_id, o.instrument, o.side, o.qty, o.filled, o.status]);
}
async function poll() {
  try {
    const r = await fetch("api/status", {cache: "no-store"});
    const s = await r.json();
    if (!r.ok) throw new Error(s.error || r.status);
    render(s);
    $("conn").textContent = "updated " + new Date().toLocaleTimeString();
    $("conn").className = "";
  } catch (e) {
    $("conn").textContent = "no answer from the bot: " + e.message + " (values below are stale)";
    $("conn").className = "down";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
""" % {"poll": POLL_MS}

BODY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hardkit-bot risk dashboard</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">
<style>%(style)s</style></head>
<body>
<header><h1>hardkit-bot</h1><span id="state" class="state">…</span><span id="reason"></span>
<span id="since" class="muted"></span><span id="conn" class="muted">loading…</span></header>
<main>
<section><h2>Limits used</h2><table><thead><tr><th>limit</th><th></th><th>used</th><th>threshold</th><th>%%</th></tr>
</thead><tbody id="limits"></tbody></table></section>
<section><h2>Equity <span id="equity-now"></span> · exposure <span id="exposure-now"></span></h2>
<svg id="equity" viewBox="0 0 600 160" preserveAspectRatio="none"></svg><div id="equity-range" class="muted"></div></section>
<section><h2>Positions</h2><table><thead><tr><th>instrument</th><th>qty</th><th>avg price</th><th>last</th>
<th>unrealized</th><th>stop</th></tr></thead><tbody id="positions"></tbody></table></section>
<section><h2>Live orders</h2><table><thead><tr><th>client order id</th><th>instrument</th><th>side</th><th>qty</th>
<th>filled</th><th>status</th></tr></thead><tbody id="orders"></tbody></table></section>
</main>
<script>%(script)s</script>
</body></html>
""" % {"style": STYLE, "script": SCRIPT}

PAGE = BODY.encode()


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def csp() -> str:
    """The page's Content-Security-Policy: its own inline blocks and same-origin requests, nothing else."""
    return (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
