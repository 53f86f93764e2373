// tabserve operations view: polls GET /operations/summary (the numbers /metrics exports) every few seconds and
// draws rates, latency percentiles, error shares, the predictions' distribution, drift and coverage by hand (SVG).
"use strict";

const HISTORY = 60;
const ops = { readings: [], series: {}, timer: null, paused: false, seconds: 3 };
const byId = (id) => document.getElementById(id);

const TILES = [
  { key: "rate", title: "Prediction requests / s", unit: "/s", format: (v) => fmt(v, 3) },
  { key: "p50", title: "Latency p50", unit: "ms", format: ms },
  { key: "p95", title: "Latency p95", unit: "ms", format: ms },
  { key: "p99", title: "Latency p99", unit: "ms", format: ms },
  { key: "errors", title: "Server errors (5xx)", unit: "% of requests", format: (v) => pct(v) },
  { key: "client", title: "Refused inputs (4xx) on predict", unit: "% of predictions", format: (v) => pct(v) },
  { key: "limited", title: "Rate limited (429) / s", unit: "/s", format: (v) => fmt(v, 3) },
  { key: "shed", title: "Shed under load (503) / s", unit: "/s", format: (v) => fmt(v, 3) },
];

function ms(seconds) {
  return seconds === null || seconds === undefined ? "—" : fmt(seconds * 1000, 3) + " ms";
}

function init() {
  byId("tiles").replaceChildren(...TILES.map((t) => el("div", { class: "tile", id: "tile-" + t.key },
    el("h3", { id: "tile-title-" + t.key }, t.title),
    el("div", { class: "num", id: "now-" + t.key }, "—"),
    el("div", { class: "sub", id: "sub-" + t.key }, "waiting for two readings"),
    svg("svg", { class: "spark", id: "spark-" + t.key, viewBox: "0 0 200 40", preserveAspectRatio: "none", role: "img", "aria-labelledby": "spark-title-" + t.key },
      svg("title", { id: "spark-title-" + t.key }, `${t.title}: no history yet`)))));
  byId("interval").addEventListener("change", () => { ops.seconds = Number(byId("interval").value); schedule(0); });
  byId("pause").addEventListener("click", () => {
    ops.paused = !ops.paused;
    byId("pause").setAttribute("aria-pressed", String(ops.paused));
    byId("pause").textContent = ops.paused ? "Resume" : "Pause";
    schedule(ops.paused ? null : 0);
  });
  byId("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    credential.set(byId("token").value.trim());
    byId("token-form").hidden = true;
    schedule(0);
  });
  ops.seconds = Number(byId("interval").value);
  schedule(0);
}

function schedule(delaySeconds) {
  clearTimeout(ops.timer);
  if (delaySeconds === null || ops.paused) return;
  ops.timer = setTimeout(poll, delaySeconds * 1000);
}

async function poll() {
  let answer;
  try {
    answer = await fetchJSON("/operations/summary");
  } catch (err) {
    byId("updated").textContent = `The service did not answer (${err.message}); trying again.`;
    schedule(ops.seconds);
    return;
  }
  if (answer.status === 401 || answer.status === 403) {
    byId("token-why").textContent = answer.status === 401
      ? "This service keeps its operations figures behind the admin credential: enter it to see them."
      : "That credential does not have the admin scope.";
    byId("token-form").hidden = false;
    byId("token").focus();
    return;
  }
  if (!answer.ok) {
    byId("updated").textContent = `Reading failed: ${(answer.body && answer.body.detail) || "HTTP " + answer.status}; trying again.`;
    schedule(ops.seconds);
    return;
  }
  ops.readings.push(answer.body);
  if (ops.readings.length > HISTORY + 1) ops.readings.shift();
  render();
  document.documentElement.dataset.reads = String((Number(document.documentElement.dataset.reads) || 0) + 1);
  byId("updated").textContent = `Updated ${new Date(answer.body.time * 1000).toLocaleTimeString("en-GB")}.`;
  schedule(ops.seconds);
}

function delta(cur, prev, pick) {
  return (pick(cur) || 0) - (prev ? pick(prev) || 0 : 0);
}

function statusSum(byStatus, test) {
  return Object.entries(byStatus || {}).reduce((n, [status, count]) => n + (test(status) ? count : 0), 0);
}

function deltaBuckets(cur, prev) {
  if (!prev || prev.length !== cur.length) return cur;
  return cur.map(([bound, count], i) => [bound, count - prev[i][1]]);
}

/** The windowed figures between the two latest readings. */
function windowFigures(cur, prev) {
  const dt = Math.max(cur.time - prev.time, 1e-6);
  const predictions = delta(cur, prev, (s) => s.requests.prediction_total);
  const all = delta(cur, prev, (s) => s.requests.total);
  const status = (test) => delta(cur, prev, (s) => statusSum(s.requests.by_status, test));
  const clientErrors = delta(cur, prev, (s) => statusSum(s.requests.prediction_by_status, (c) => c.startsWith("4")));
  const buckets = deltaBuckets(cur.latency_seconds.buckets, prev.latency_seconds.buckets);
  return {
    dt,
    rate: predictions / dt,
    p50: histogramQuantile(0.5, buckets),
    p95: histogramQuantile(0.95, buckets),
    p99: histogramQuantile(0.99, buckets),
    errors: all > 0 ? status((c) => c.startsWith("5")) / all : null,
    client: predictions > 0 ? clientErrors / predictions : null,
    limited: status((c) => c === "429") / dt,
    shed: status((c) => c === "503") / dt,
    predictions,
  };
}

function render() {
  const n = ops.readings.length;
  const cur = ops.readings[n - 1];
  const prev = n > 1 ? ops.readings[n - 2] : null;
  if (prev) {
    const w = windowFigures(cur, prev);
    byId("window-text").textContent = `(last ${fmt(w.dt, 2)} s)`;
    for (const t of TILES) {
      const values = (ops.series[t.key] = ops.series[t.key] || []);
      values.push(w[t.key]);
      if (values.length > HISTORY) values.shift();
      const node = byId("now-" + t.key);
      node.textContent = t.format(w[t.key]);
      node.dataset.value = w[t.key] === null ? "" : String(w[t.key]);
      byId("sub-" + t.key).textContent = w[t.key] === null
        ? (t.key.startsWith("p") || t.key === "client" ? "no predictions in this window" : "no requests in this window")
        : `${t.unit}, over ${fmt(w.dt, 2)} s`;
      sparkline(t, values);
    }
  }
  totals(cur);
  predictions(cur, prev);
  drift(cur);
  coverage(cur);
}

function sparkline(tile, values) {
  const chart = byId("spark-" + tile.key);
  const known = values.filter((v) => v !== null);
  const max = Math.max(...known, 0) || 1;
  const step = 200 / Math.max(HISTORY - 1, 1);
  const offset = 200 - (values.length - 1) * step;
  const points = values.map((v, i) => (v === null ? null : `${(offset + i * step).toFixed(1)},${(38 - (v / max) * 34).toFixed(1)}`)).filter(Boolean);
  const summary = known.length
    ? `${tile.title} over the last ${values.length} readings: from ${tile.format(Math.min(...known))} to ${tile.format(Math.max(...known))}, now ${tile.format(values[values.length - 1])}`
    : `${tile.title}: nothing measured yet`;
  chart.replaceChildren(svg("title", { id: "spark-title-" + tile.key }, summary),
    svg("line", { class: "dash", x1: 0, x2: 200, y1: 38, y2: 38 }),
    svg("polyline", { points: points.join(" "), "data-points": points.length }));
}

function totals(cur) {
  const body = byId("status-table").tBodies[0];
  const rows = Object.entries(cur.requests.prediction_by_status).map(([status, count]) =>
    el("tr", {}, el("th", { scope: "row" }, status), el("td", { class: "num", id: "total-status-" + status, "data-value": count }, fmt(count, 12))));
  rows.push(el("tr", {}, el("th", { scope: "row" }, "all"), el("td", { class: "num", id: "total-predictions", "data-value": cur.requests.prediction_total }, fmt(cur.requests.prediction_total, 12))));
  body.replaceChildren(...rows);
  const lat = cur.latency_seconds;
  byId("latency-table").tBodies[0].replaceChildren(...["p50", "p95", "p99"].map((q) =>
    el("tr", {}, el("th", { scope: "row" }, q), el("td", { class: "num", id: "total-" + q, "data-value": lat[q] === null ? "" : lat[q] }, ms(lat[q])))));
  const rejected = Object.entries(cur.rejected).map(([reason, count]) => `${count} ${reason.replace("_", " ")}`);
  byId("admission-text").textContent = `${fmt(lat.count, 12)} prediction requests timed; ${cur.in_flight} in flight now; refused by admission control: ${rejected.length ? rejected.join(", ") : "none"}.`;
}

function predictions(cur, prev) {
  const box = byId("predictions");
  const parts = [];
  for (const [model, entry] of Object.entries(cur.predictions)) {
    const before = prev && prev.predictions[model];
    const fresh = before && before.count !== entry.count;
    const scope = fresh ? "between the two latest readings" : "since start";
    if (entry.task === "regression") {
      const counts = deltaBuckets(entry.buckets, fresh ? before.buckets : null);
      parts.push(el("div", {}, el("h3", {}, `${model}: predicted values (${scope})`), histogram(model, counts)));
    } else {
      const classes = Object.entries(entry.classes).map(([cls, count]) => [cls, count - (fresh ? before.classes[cls] || 0 : 0)]);
      const total = classes.reduce((n, [, c]) => n + c, 0) || 1;
      parts.push(el("div", {}, el("h3", {}, `${model}: predicted classes (${scope})`),
        el("ul", { class: "bars", id: "classes-" + model }, classes.map(([cls, count]) => {
          const fill = el("span", {});
          fill.style.width = `${(count / total) * 100}%`;
          return el("li", { "data-class": cls, "data-value": count }, el("span", {}, cls), el("span", { class: "bar", "aria-hidden": "true" }, fill), el("span", { class: "value" }, `${fmt(count, 12)} (${pct(count / total)})`));
        }))));
    }
  }
  box.replaceChildren(...(parts.length ? parts : [el("p", { class: "muted" }, "No prediction yet.")]));
}

/** Per-bucket counts of a cumulative histogram as bars (non-cumulative), with a table of the same numbers. */
function histogram(model, cumulative) {
  const bins = cumulative.map(([bound, count], i) => {
    const lower = i ? cumulative[i - 1][0] : null;
    const label = bound === "+Inf" ? `> ${lower}` : lower === null ? `≤ ${bound}` : `${lower}–${bound}`;
    const short = bound === "+Inf" ? `>${fmt(Number(lower))}` : `≤${fmt(Number(bound))}`;
    return { label, short, count: count - (i ? cumulative[i - 1][1] : 0) };
  });
  const W = 480, H = 150, B = 32;
  const max = Math.max(...bins.map((b) => b.count), 1);
  const w = W / bins.length;
  const bars = bins.map((b, i) => {
    const h = (b.count / max) * (H - B - 14);
    return svg("g", {}, svg("rect", { x: i * w + 2, y: H - B - h, width: w - 4, height: h, "data-count": b.count }),
      svg("text", { x: i * w + w / 2, y: H - B - h - 3, "text-anchor": "middle" }, b.count ? fmt(b.count, 12) : ""),
      svg("text", { x: i * w + w / 2, y: H - B + 14, "text-anchor": "middle" }, b.short));
  });
  const total = bins.reduce((n, b) => n + b.count, 0);
  const chart = svg("svg", { class: "hist", id: "hist-" + model, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "hist-title-" + model },
    svg("title", { id: "hist-title-" + model }, `${model}: ${total} predictions in ${bins.length} bins (each labelled by its upper bound); the numbers are in the table below`), bars);
  const table = el("details", {}, el("summary", {}, "The numbers"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Bin"), el("th", { scope: "col", class: "num" }, "Answers"))),
      el("tbody", {}, bins.map((b) => el("tr", {}, el("th", { scope: "row" }, b.label), el("td", { class: "num" }, fmt(b.count, 12)))))));
  return el("div", {}, chart, table);
}

function drift(cur) {
  const box = byId("drift");
  const parts = Object.entries(cur.drift_psi).map(([model, features]) => {
    const window = (cur.drift_window || {})[model];
    const enough = !window || window.rows >= window.min_rows;
    const rows = Object.entries(features).sort((a, b) => b[1] - a[1]).map(([feature, psi]) => {
      const level = psi >= 0.25 ? "drift" : psi >= 0.1 ? "watch" : "stable";
      const word = enough ? level : `${level}? (too few rows)`;
      const bar = el("span", { class: "psi-bar", "aria-hidden": "true" });
      bar.style.width = `${Math.min(psi / 0.5, 1) * 6}rem`;
      return el("tr", {}, el("th", { scope: "row" }, feature),
        el("td", { class: "num", id: `psi-${model}-${feature}`, "data-value": psi }, bar, fmt(psi, 3)),
        el("td", { class: enough ? "word-" + level : "" }, word));
    });
    const note = window
      ? `${window.rows} rows in the window (this worker)` + (enough ? "." : `; ${window.min_rows} are needed before the PSI is a verdict (small samples read high).`)
      : "";
    return el("div", {}, el("h3", {}, model), el("p", { class: "muted", id: "drift-note-" + model }, note),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Feature"), el("th", { scope: "col", class: "num" }, "PSI"), el("th", { scope: "col" }, "Status"))), el("tbody", {}, rows)));
  });
  box.replaceChildren(...(parts.length ? parts : [el("p", { class: "muted" }, "No drift window yet (it fills with predictions).")]));
}

function coverage(cur) {
  const box = byId("coverage");
  if (!cur.coverage.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No feedback yet: realised coverage appears once true values are sent to POST /feedback (and the prediction log is on)."));
    return;
  }
  const rows = cur.coverage.map((c) => {
    const few = cur.coverage_min_samples && c.samples < cur.coverage_min_samples;
    const side = c.wilson_upper < c.band_lower ? "below band" : c.wilson_lower > c.band_upper ? "above band" : "within band";
    const word = few ? `too few samples (${fmt(c.samples, 12)} of ${cur.coverage_min_samples} needed)` : side;
    const cell = { model: c.model, version: c.version, level: c.level, pattern: c.pattern, samples: c.samples, covered: c.covered };
    return el("tr", { "data-cell": JSON.stringify(cell) }, el("td", {}, c.model), el("td", {}, c.version), el("td", { class: "num" }, pct(c.level)), el("td", {}, c.pattern),
      el("td", { class: "num", "data-value": c.coverage }, pct(c.coverage)), el("td", { class: "num" }, `${pct(c.wilson_lower)} – ${pct(c.wilson_upper)}`),
      el("td", { class: "num" }, `${pct(c.band_lower)} – ${pct(c.band_upper)}`), el("td", { class: "num" }, `${fmt(c.covered, 12)} / ${fmt(c.samples, 12)}`),
      el("td", { class: few || side === "within band" ? "" : "word-drift" }, word));
  });
  const head = ["Model", "Version", "Level", "Pattern", "Realised", "Wilson interval", "Band", "Covered / samples", "Status"];
  box.replaceChildren(el("div", { class: "table-wrap", role: "region", tabindex: "0", "aria-label": "Coverage cells (scrolls sideways)" },
    el("table", { id: "coverage-table" }, el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))));
}

document.addEventListener("DOMContentLoaded", init);
