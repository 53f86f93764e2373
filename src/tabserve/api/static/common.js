// tabserve web page: helpers shared by the try page (app.js) and the operations view (ops.js).
// Plain DOM, no library, no HTML parsed from strings: every text reaches the page through textContent (safe under the strict CSP).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

/** An element: el("p", {class: "x", id: "y"}, "text", child, ...). Attributes with value null/false are skipped. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element, same form as el(). */
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** The credential the visitor gave (kept for this tab only), as request headers. */
const credential = {
  key: "tabserve-credential",
  get() { return sessionStorage.getItem(this.key) || ""; },
  set(value) { if (value) sessionStorage.setItem(this.key, value); else sessionStorage.removeItem(this.key); },
  headers() { const v = this.get(); return v ? { Authorization: "Bearer " + v } : {}; },
};

/** fetch() of JSON: {status, ok, body} (body null when the answer is not JSON). */
async function fetchJSON(url, options) {
  const opts = Object.assign({}, options);
  opts.headers = Object.assign({ Accept: "application/json" }, credential.headers(), opts.headers || {});
  const response = await fetch(url, opts);
  let body = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) body = await response.json();
  return { status: response.status, ok: response.ok, body, headers: response.headers };
}

/** A number with about `digits` significant digits, trailing zeros dropped (1234.5 -> "1234.5", 0.000123 -> "0.000123"). */
function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const d = digits || 4;
  const abs = Math.abs(value);
  if (abs >= 10 ** d) return Math.round(value).toLocaleString("en-US");
  return String(Number(value.toPrecision(d)));
}

/** A share 0..1 as a percentage text. */
function pct(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return fmt(value * 100, digits || 3) + " %";
}

/** Readable label of a snake_case name: "engine_size_l" -> "Engine size l". */
function humanize(name) {
  const text = String(name).replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Prometheus's histogram_quantile over cumulative [[bound, count], ...] (bound "+Inf" last): null when empty. */
function histogramQuantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [rawBound, count] of buckets) {
    const bound = rawBound === "+Inf" ? Infinity : Number(rawBound);
    if (count >= rank) {
      if (bound === Infinity) return lowerBound;
      if (count === lowerCount) return bound;
      return lowerBound + ((bound - lowerBound) * (rank - lowerCount)) / (count - lowerCount);
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound;
}

/** "Nice" tick values covering [lo, hi] (about `count` of them). */
function ticks(lo, hi, count) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / (count || 5);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}
