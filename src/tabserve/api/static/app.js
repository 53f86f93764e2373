// tabserve try page: choose a served model, fill the form built from its schema (GET /models/{name}),
// predict (POST /models/{name}/predict?level=...), and show the answer, its confidence, warnings and the curl.
"use strict";

const state = { doc: null, fields: {}, loading: 0, interactive: false };
const $ = (id) => document.getElementById(id);

async function init() {
  const select = $("model-select");
  const { ok, body } = await fetchJSON("/models");
  select.textContent = "";
  if (!ok || !body || !body.models.length) {
    $("model-status").textContent = "No model is served.";
    return;
  }
  for (const m of body.models) {
    const label = `${m.name} ${m.version || ""}` + (m.status === "ready" ? "" : ` (${m.status})`);
    select.append(el("option", { value: m.name, disabled: !m.version }, label));
  }
  const asked = new URLSearchParams(location.search).get("model");
  const names = body.models.map((m) => m.name);
  select.value = names.includes(asked) ? asked : names.includes(body.default_model) ? body.default_model : names[0];
  select.disabled = false;
  select.addEventListener("change", () => {
    history.replaceState(null, "", "?model=" + encodeURIComponent(select.value));
    loadModel(select.value);
  });
  $("predict-form").addEventListener("submit", (event) => { event.preventDefault(); predict(); });
  $("fill-example").addEventListener("click", () => fill(state.doc.example_request || {}));
  $("clear-form").addEventListener("click", () => fill({}));
  $("copy-curl").addEventListener("click", copyCurl);
  const key = $("api-key");
  key.value = credential.get();
  key.addEventListener("change", () => credential.set(key.value.trim()));
  await loadModel(select.value);
}

async function loadModel(name) {
  const ticket = ++state.loading;
  setBusy(true);
  $("model-status").textContent = `Loading ${name}…`;
  const { ok, body } = await fetchJSON("/models/" + encodeURIComponent(name));
  if (ticket !== state.loading) return;
  if (!ok) {
    $("model-status").textContent = `${name} cannot be shown: ${(body && body.detail) || "error"}`;
    return;
  }
  state.doc = body;
  $("model-status").textContent = `${body.name} ${body.version}: ${body.output.task}, predicts ${body.output.name}` +
    (body.output.unit ? ` in ${body.output.unit}` : "");
  $("model-description").textContent = body.description || "";
  $("card-link").href = `/models/${encodeURIComponent(name)}/card`;
  $("card-link").textContent = `Model card of ${name} ${body.version}`;
  buildForm(body);
  fill(body.example_request || {});
  $("result").hidden = true;
  setBusy(false);
  if (!state.interactive) {
    state.interactive = true;
    performance.mark("tabserve-interactive");
    document.documentElement.dataset.ready = "true";
  }
}

function setBusy(busy) {
  for (const id of ["submit", "fill-example", "clear-form"]) $(id).disabled = busy;
}

function buildForm(doc) {
  const box = $("inputs");
  box.replaceChildren(el("legend", {}, `Inputs of ${doc.name}`));
  state.fields = {};
  for (const spec of doc.inputs) {
    const field = buildField(spec);
    state.fields[spec.name] = field;
    box.append(field.root);
  }
  const level = $("level");
  level.replaceChildren(...doc.confidence.levels.map((l) => el("option", { value: l }, pct(l))));
  level.value = String(doc.confidence.default_level);
}

function buildField(spec) {
  const id = "in-" + spec.name;
  const describedBy = ["desc-" + spec.name];
  const label = el("label", { for: id }, humanize(spec.name), el("code", {}, spec.name),
    spec.required ? null : el("span", { class: "tag" }, "optional"));
  const input = el("input", { id, name: spec.name, type: "text", autocomplete: "off", "aria-required": spec.required ? "true" : null });
  const control = el("div", { class: "control" }, input);
  const hintParts = [];
  let unit = null;
  if (spec.type === "number") {
    input.setAttribute("inputmode", spec.integer ? "numeric" : "decimal");
    const range = spec.plausible_range || {};
    const train = spec.training_range || {};
    const u = spec.unit && spec.unit !== "count" ? " " + spec.unit : "";
    hintParts.push(`Plausible range ${fmt(range.min)} to ${fmt(range.max)}${u}; the training data spans ${fmt(train.min)} to ${fmt(train.max)}${u}.`);
    if (spec.integer) hintParts.push("A whole number.");
    if (spec.units && spec.units.length > 1) {
      unit = el("select", { id: "unit-" + spec.name, "aria-describedby": "hint-" + spec.name },
        spec.units.map((x) => el("option", { value: x }, x)));
      unit.value = spec.unit;
      control.append(el("label", { class: "visually-hidden", for: "unit-" + spec.name }, `Unit of ${humanize(spec.name)}`), unit);
      hintParts.push(`Ranges in ${spec.unit}; other units are converted by the service.`);
    } else if (spec.unit && spec.unit !== "count") {
      control.append(el("span", { class: "muted", "aria-hidden": "true" }, spec.unit));
    }
  } else if (spec.type === "category") {
    const listId = "list-" + spec.name;
    input.setAttribute("list", listId);
    const options = [...spec.categories, ...Object.keys(spec.aliases || {})];
    control.append(el("datalist", { id: listId }, options.map((c) => el("option", { value: c }))));
    hintParts.push(`One of ${spec.categories.length} known values (type to search the list; matched ignoring case and punctuation). Another value is served as “unknown”, with a warning.`);
  }
  const hint = hintParts.length ? el("p", { class: "hint", id: "hint-" + spec.name }, hintParts.join(" ")) : null;
  if (hint) describedBy.push(hint.id);
  input.setAttribute("aria-describedby", describedBy.join(" "));
  const error = el("p", { class: "error", id: "err-" + spec.name, hidden: true });
  const root = el("div", { class: "field", id: "field-" + spec.name }, label, control,
    el("p", { class: "desc", id: "desc-" + spec.name }, spec.description || ""), hint, error);
  return { spec, root, input, unit, error, describedBy };
}

function fill(example) {
  for (const [name, field] of Object.entries(state.fields)) {
    let value = example[name];
    if (field.unit) field.unit.value = field.spec.unit;
    if (value && typeof value === "object" && "value" in value) {
      if (field.unit && value.unit) field.unit.value = value.unit;
      value = value.value;
    }
    field.input.value = value === undefined || value === null ? "" : String(value);
  }
  clearErrors();
}

/** The request body from the form, and the names left empty. */
function collect() {
  const body = {};
  const omitted = [];
  for (const [name, field] of Object.entries(state.fields)) {
    const text = field.input.value.trim();
    if (text === "") { omitted.push(name); continue; }
    let value = text;
    if (field.spec.type === "number" && /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) value = Number(text);
    if (field.unit && field.unit.value !== field.spec.unit) value = { value, unit: field.unit.value };
    body[name] = value;
  }
  return { body, omitted };
}

async function predict() {
  const doc = state.doc;
  const { body, omitted } = collect();
  const level = $("level").value;
  const path = `/models/${encodeURIComponent(doc.name)}/predict?level=${encodeURIComponent(level)}`;
  clearErrors();
  $("submit").disabled = true;
  let answer;
  try {
    answer = await fetchJSON(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (err) {
    showGeneral([`The service did not answer (${err.message}).`]);
    return;
  } finally {
    $("submit").disabled = false;
  }
  if (answer.status === 422 && answer.body && Array.isArray(answer.body.errors)) {
    showFieldErrors(answer.body);
    return;
  }
  if (!answer.ok) {
    const detail = answer.body ? `${answer.body.title}: ${answer.body.detail}` : `HTTP ${answer.status}`;
    showGeneral([detail]);
    return;
  }
  showResult(doc, answer.body, body, omitted, path);
}

function clearErrors() {
  $("form-errors").replaceChildren();
  for (const field of [...Object.values(state.fields), levelField()]) {
    field.error.hidden = true;
    field.error.textContent = "";
    field.input.removeAttribute("aria-invalid");
    field.input.setAttribute("aria-describedby", field.describedBy.join(" "));
  }
}

function levelField() {
  return { input: $("level"), error: $("err-level"), describedBy: ["level-desc"], spec: { name: "level" } };
}

function showGeneral(messages) {
  $("form-errors").replaceChildren(el("p", {}, messages.length > 1 ? "The request was refused:" : messages[0]),
    messages.length > 1 ? el("ul", {}, messages.map((m) => el("li", {}, m))) : null);
}

function showFieldErrors(problem) {
  const items = [];
  const general = [];
  let first = null;
  for (const error of problem.errors) {
    const loc = error.loc || [];
    const field = loc[0] === "body" && state.fields[loc[1]] ? state.fields[loc[1]]
      : loc[0] === "query" && loc[1] === "level" ? levelField() : null;
    if (!field) { general.push(`${error.field || "request"}: ${error.message}`); continue; }
    field.error.textContent = field.error.textContent ? field.error.textContent + " " + error.message : error.message;
    field.error.hidden = false;
    field.input.setAttribute("aria-invalid", "true");
    field.input.setAttribute("aria-describedby", [...field.describedBy, field.error.id].join(" "));
    items.push(el("li", {}, el("a", { href: "#" + field.input.id }, `${humanize(field.spec.name)}: ${error.message}`)));
    first = first || field.input;
  }
  const summary = [el("p", {}, `The service refused the request: ${problem.errors.length} field${problem.errors.length > 1 ? "s" : ""} to fix.`)];
  if (items.length) summary.push(el("ul", {}, items));
  if (general.length) summary.push(el("ul", {}, general.map((g) => el("li", {}, g))));
  $("form-errors").replaceChildren(...summary);
  (first || $("form-errors")).focus();
}

function showResult(doc, answer, body, omitted, path) {
  const box = $("answer");
  box.replaceChildren();
  if (doc.output.task === "regression") box.append(...regression(doc, answer));
  else box.append(...classification(answer));
  $("warnings").replaceChildren(...warnings(doc, answer, body, omitted));
  $("curl").textContent = curl(path, body);
  $("copy-status").textContent = "";
  $("result").hidden = false;
  $("result-title").focus();
}

function regression(doc, answer) {
  const unit = answer.unit || doc.output.unit || "";
  const { level, lower, upper } = answer.interval;
  const text = `${pct(level)} interval: ${lower} to ${upper} ${unit}`;
  return [
    el("p", { class: "big" }, el("span", { id: "prediction", "data-value": answer.prediction }, String(answer.prediction)),
      " ", el("small", {}, unit)),
    el("p", {}, el("span", { id: "interval-level", "data-value": level }, pct(level)), " interval: ",
      el("strong", { id: "interval-lower", "data-value": lower }, String(lower)), " to ",
      el("strong", { id: "interval-upper", "data-value": upper }, String(upper)), ` ${unit}`),
    scale(answer.prediction, lower, upper, unit, text),
    el("p", { class: "muted" }, `The service expects the true ${doc.output.name} to fall inside this interval for ${pct(level)} of vehicles like this one (split conformal, calibrated on held-out data).`),
  ];
}

/** The interval drawn on a scale: band from lower to upper, a dot at the prediction, labelled ticks. */
function scale(prediction, lower, upper, unit, description) {
  const W = 560, H = 96, L = 20, R = 20;
  const pad = Math.max((upper - lower) * 0.6, Math.abs(prediction) * 0.02, 1e-6);
  const lo = Math.min(lower, prediction) - pad, hi = Math.max(upper, prediction) + pad;
  const x = (v) => L + ((v - lo) / (hi - lo)) * (W - L - R);
  const axisY = 66;
  const parts = [
    svg("title", { id: "scale-title" }, `${description}; prediction ${prediction} ${unit}`),
    svg("rect", { class: "band", x: x(lower), y: 36, width: Math.max(x(upper) - x(lower), 2), height: 22, id: "scale-band" }),
    svg("line", { class: "axis", x1: L, x2: W - R, y1: axisY, y2: axisY }),
  ];
  for (const t of ticks(lo, hi, 6)) {
    parts.push(svg("g", { class: "tick" }, svg("line", { class: "axis", x1: x(t), x2: x(t), y1: axisY, y2: axisY + 5 }),
      svg("text", { x: x(t), y: axisY + 18, "text-anchor": "middle" }, fmt(t, 5))));
  }
  parts.push(svg("text", { x: x(lower) - 4, y: 30, "text-anchor": "end" }, `${lower}`));
  parts.push(svg("text", { x: x(upper) + 4, y: 30, "text-anchor": "start" }, `${upper}`));
  parts.push(svg("line", { class: "axis", x1: x(prediction), x2: x(prediction), y1: 30, y2: 62 }));
  parts.push(svg("circle", { class: "point", cx: x(prediction), cy: 47, r: 5, id: "scale-point" }));
  parts.push(svg("text", { x: x(prediction), y: 14, "text-anchor": "middle" }, `${prediction} ${unit}`));
  return svg("svg", { class: "scale", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "scale-title", id: "scale" }, parts);
}

function classification(answer) {
  const level = answer.level;
  const inSet = new Set(answer.prediction_set || []);
  const entries = Object.entries(answer.probabilities).sort((a, b) => b[1] - a[1]);
  const items = entries.map(([cls, p]) => {
    const fill = el("span", {});
    fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
    return el("li", { class: inSet.has(cls) ? "in-set" : null, "data-class": cls, "data-value": p },
      el("span", {}, cls, inSet.has(cls) ? el("span", { class: "tag" }, "in set") : null),
      el("span", { class: "bar", "aria-hidden": "true" }, fill),
      el("span", { class: "value" }, pct(p, 4)));
  });
  const set = [...inSet];
  return [
    el("p", { class: "big" }, el("span", { id: "prediction", "data-value": answer.prediction }, String(answer.prediction))),
    el("h3", {}, "Class probabilities"),
    el("ul", { class: "bars", id: "probabilities", "aria-label": "Probability of each class" }, items),
    el("p", { id: "prediction-set", "data-value": JSON.stringify(set) },
      `${pct(level)} prediction set: `, el("strong", {}, set.length ? set.join(", ") : "(empty)"),
      set.length > 1 ? ` — the model cannot tell these apart at ${pct(level)} confidence.` : set.length === 1 ? " — one class at this level." : ""),
  ];
}

/** Warnings in plain words: the service's, and what the form left empty. */
function warnings(doc, answer, body, omitted) {
  const words = [];
  for (const w of answer.warnings || []) {
    const label = humanize(w.field);
    const given = typeof body[w.field] === "object" ? JSON.stringify(body[w.field]) : body[w.field];
    if (w.code === "unknown_category") words.push(`${label}: “${given}” is not a value the model knows. It was treated as unknown, so the answer leans on the other inputs.`);
    else if (w.code === "out_of_distribution") words.push(`${label}: ${w.message.replace(/^\S+ = /, "")}. Trust this answer less.`);
    else if (w.code === "unknown_field") words.push(`${label} is not an input of this model and was ignored.`);
    else words.push(`${label}: ${w.message}`);
  }
  if (answer.out_of_distribution && !(answer.warnings || []).some((w) => w.code === "out_of_distribution")) {
    words.push("These inputs are unlike the training data: the answer is an extrapolation.");
  }
  const patternInputs = doc.confidence.pattern_inputs || [];
  const missing = patternInputs.filter((n) => omitted.includes(n));
  if (missing.length) {
    const key = patternInputs.map((n) => (omitted.includes(n) ? "0" : "1")).join("");
    const pattern = (doc.confidence.patterns || {})[key];
    words.push(`You left ${missing.map(humanize).join(", ")} empty: the ${doc.output.task === "regression" ? "interval" : "prediction set"} is the one calibrated for answers without ${missing.length > 1 ? "them" : "it"}` +
      (pattern ? ` (“${pattern}”)` : "") + ", usually wider than with every input given.");
  }
  const other = omitted.filter((n) => !patternInputs.includes(n));
  if (other.length) words.push(`Left empty: ${other.map(humanize).join(", ")} (the model treats ${other.length > 1 ? "them" : "it"} as missing).`);
  if (!words.length) return [];
  return [el("h3", {}, "Warnings"), el("ul", { id: "warning-list" }, words.map((w) => el("li", {}, w)))];
}

function curl(path, body) {
  const quote = (s) => "'" + s.replace(/'/g, "'\\''") + "'";
  const lines = [`curl -sS -X POST ${quote(location.origin + path)}`, `  -H 'Content-Type: application/json'`];
  if (credential.get()) lines.push(`  -H "Authorization: Bearer $TABSERVE_API_KEY"`);
  lines.push(`  -d ${quote(JSON.stringify(body))}`);
  return lines.join(" \\\n");
}

async function copyCurl() {
  const text = $("curl").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch (err) {
    const range = document.createRange();
    range.selectNodeContents($("curl"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $("copy-status").textContent = "Selected: press Ctrl+C to copy.";
  }
}

document.addEventListener("DOMContentLoaded", init);
