// Operator dashboard: live counters (polled), model versions, composition adherence, catalog
// stats and the evaluation reports found under the data directory.

import { ApiError, el, fmt, getBlobURL, getJSON, wireKeyForm } from "./api.js";

wireKeyForm();
const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const HISTORY = 60;
const rates = [];
let last = null;
let servingVersion = null;

function tile(label, value, hint, extra) {
  return el("div", { class: "tile" }, el("div", { class: "label", text: label }),
    el("div", { class: String(value).length > 12 ? "value long" : "value", "data-figure": label, text: value }), hint ? el("div", { class: "hint", text: hint }) : null, extra || null);
}

function sparkline(values) {
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => `${(i / Math.max(1, HISTORY - 1)) * 100},${30 - (v / max) * 28}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 32");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `events per second over the last ${values.length} readings, peak ${fmt(max, 1)}`);
  svg.innerHTML = `<polyline points="${pts}" fill="none" stroke="#5b8cff" stroke-width="1.5" vector-effect="non-scaling-stroke"/>`;
  return svg;
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return `${fmt(v, v >= 100 ? 0 : v >= 10 ? 1 : 2)} ms`;
}

async function pollStats() {
  try {
    const s = await getJSON("/v1/ui/stats");
    if (last) {
      const dt = s.time - last.time;
      rates.push(dt > 0 ? Math.max(0, (s.events_accepted - last.events_accepted) / dt) : 0);
      if (rates.length > HISTORY) rates.shift();
    }
    last = s;
    const rate = rates.length ? rates[rates.length - 1] : null;
    const lag = s.speed_layer_lag_s;
    $("live").replaceChildren(
      tile("Events / s", rate === null ? "…" : fmt(rate, 1), `over ${POLL_MS / 1000} s`, sparkline(rates)),
      tile("Events accepted", fmt(s.events_accepted), `${fmt(s.events_rejected)} rejected`),
      tile("Speed-layer lag", lag === null || lag === undefined ? "–" : `${fmt(lag, 2)} s`, "age of the newest event applied"),
      tile("Cache hit ratio", s.cache_hit_ratio === null ? "–" : `${fmt(100 * s.cache_hit_ratio, 1)} %`, `${fmt(s.cache_reads)} homepage cache reads`),
      tile("Homepage p50", ms(s.homepage_p50_ms), `${fmt(s.homepage_requests)} requests`),
      tile("Homepage p99", ms(s.homepage_p99_ms), "from the latency histogram"),
      tile("Model version", s.model_version || servingVersion || "–", `${fmt(s.requests)} requests served`));
    $("live-at").textContent = `updated ${new Date(s.time * 1000).toLocaleTimeString()}`;
  } catch (err) {
    $("live").replaceChildren(el("p", { class: "muted", text: `Counters unavailable: ${err.message}` }));
  }
}

function cell(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? fmt(v) : fmt(v, 4);
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return v.map(cell).join(", ");
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k} ${cell(x)}`).join(" · ");
  return String(v);
}

function table(rows, columns) {
  columns = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const label = (c) => c.split(".").pop().replaceAll("_", " ");
  return el("table", {}, el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", title: c, text: label(c) })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) => el("td", { text: cell(r[c]) }))))));
}

function explain(err, what) {
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return `${what} needs an API key with the admin scope (set it in the header).`;
  if (err instanceof ApiError && err.status === 404) return `${what}: not served by this server.`;
  return `${what} unavailable: ${err.message}`;
}

// Model rows as the batch layer lists them (version, current, ok, created, counts, metrics);
// nested objects become "counts.users"-style columns so any manifest shape still reads.
function flatten(m) {
  const row = {};
  for (const [k, v] of Object.entries(m)) {
    if (k === "files" || k === "data") continue;
    if (v && typeof v === "object" && !Array.isArray(v)) {
      for (const [k2, v2] of Object.entries(v)) if (typeof v2 !== "object" || v2 === null) row[`${k}.${k2}`] = v2;
    } else row[k] = v;
  }
  if (typeof row.created === "string") row.created = row.created.replace("T", " ").slice(0, 19);
  if ("current" in row) row.current = row.current ? "serving" : "";
  return row;
}

function history(rows) {
  // one small line per numeric metric, oldest version on the left
  const ordered = [...rows].reverse();
  const metrics = [...new Set(ordered.flatMap((r) => Object.keys(r).filter((k) => k.startsWith("metrics.") && typeof r[k] === "number")))];
  if (ordered.length < 2 || !metrics.length) return "";
  return el("div", { class: "cols" }, metrics.map((m) => {
    const ys = ordered.map((r) => r[m]).filter((v) => typeof v === "number");
    const lo = Math.min(...ys), hi = Math.max(...ys);
    const pts = ys.map((v, i) => `${(i / Math.max(1, ys.length - 1)) * 100},${28 - ((v - lo) / Math.max(1e-9, hi - lo)) * 24}`).join(" ");
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 100 32");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${m} over ${ys.length} versions, from ${fmt(ys[0], 4)} to ${fmt(ys[ys.length - 1], 4)}`);
    svg.innerHTML = `<polyline points="${pts}" fill="none" stroke="#5bd18b" stroke-width="1.5" vector-effect="non-scaling-stroke"/>`;
    return tile(m.slice(8), fmt(ys[ys.length - 1], 4), `${ys.length} versions, min ${fmt(lo, 4)}, max ${fmt(hi, 4)}`, svg);
  }));
}

async function loadModels() {
  try {
    const doc = await getJSON("/v1/admin/models");
    const list = Array.isArray(doc) ? doc : (doc.models || doc.versions || []);
    const serving = Array.isArray(doc) ? null : (doc.serving || doc.current || doc.published || null);
    if (!list.length) {
      $("models").replaceChildren(el("p", { class: "muted", text: "No model trained yet (`reelrec train`)." }));
      return;
    }
    const rows = list.map((m) => flatten(typeof m === "object" ? m : { version: m }));
    const current = serving || (rows.find((r) => r.current === "serving") || {}).version;
    servingVersion = current || null;
    $("models").replaceChildren(
      current ? el("p", {}, "Serving ", el("strong", { text: cell(current) }), ` · ${rows.length} version${rows.length > 1 ? "s" : ""}`,
        doc.published && doc.published !== current ? ` · published ${doc.published}` : "",
        doc.refused && doc.refused.length ? ` · refused ${doc.refused.join(", ")}` : "",
        doc.running_job ? ` · running: ${cell(doc.running_job.kind || doc.running_job.job_id || "job")} (${cell(doc.running_job.state || "")})` : "") : "",
      table(rows), history(rows));
  } catch (err) {
    $("models").replaceChildren(el("p", { class: "muted", text: explain(err, "Model history") }));
  }
}

async function loadAdherence() {
  try {
    const a = await getJSON("/v1/ui/adherence");
    if (!a.pages) {
      $("adherence").replaceChildren(el("p", { class: "muted", text: a.note || "No precomputed pages yet (`reelrec precompute`)." }));
      return;
    }
    const over = a.pages_over_genre_cap;
    const modes = Object.entries(a.modes || {}).map(([k, v]) => `${fmt(v)} ${k.replace("_", " ")}`).join(", ");
    $("adherence").replaceChildren(
      el("div", { class: "grid" },
        tile("Pages checked", fmt(a.pages), `${a.sampled ? `a sample of ${fmt(a.users)} users` : "every user"}; ${modes}`),
        tile("Genre-cap violations", fmt(over), `pages with a genre in more than ${a.genre_cap} of ${a.page_size}`),
        tile("Kind floor held", a.kind_floor_held === null ? "–" : `${fmt(100 * a.kind_floor_held, 1)} %`,
          `pages where every kind is within one slot of its ${fmt(100 * a.kind_floor)} % floor`),
        tile("Explore / novel slots", `${fmt(a.slots_mean.explore, 1)} / ${fmt(a.slots_mean.novel, 1)}`, "mean per page"),
        a.precompute ? tile("Kind mix off target", fmt(a.precompute.kind_mix_off_by_more_than_one),
          `of ${fmt(a.precompute.kind_mix_checked)} personal pages, by more than one slot (precompute)`) : null),
      el("div", { class: "cols" },
        el("div", {}, el("h3", { class: "small muted", text: "Mean kind share of Top picks" }), bars(a.kind_share_mean, (v) => `${fmt(100 * v, 1)} %`)),
        el("div", {}, el("h3", { class: "small muted", text: "Pages by the count of their most frequent genre" }), bars(Object.fromEntries(Object.entries(a.max_genre_count).map(([k, v]) => [`${k} of one genre`, v])), fmt))),
      el("p", { class: "small muted", text: `Model ${a.model_version || "–"}. ${a.note || ""}` }));
    $("adherence").querySelector("[data-figure='Genre-cap violations']").classList.add(over ? "bad-text" : "ok-text");
  } catch (err) {
    $("adherence").replaceChildren(el("p", { class: "muted", text: explain(err, "Adherence") }));
  }
}

function bars(counts, format = fmt) {
  const entries = Object.entries(counts || {});
  const max = Math.max(1e-9, ...entries.map(([, v]) => v));
  return el("ul", { class: "bars" }, entries.map(([k, v]) => el("li", {},
    el("span", { text: k }), el("span", { class: "bar", style: `width:${(100 * v) / max}%`, role: "presentation" }),
    el("span", { class: "num", text: format(v) }))));
}

async function loadCatalog() {
  try {
    const c = await getJSON("/v1/ui/catalog");
    $("catalog-tiles").replaceChildren(
      tile("Titles", fmt(c.titles), `${fmt(c.genres)} genres`),
      tile("Users", fmt(c.users), `${fmt(c.users_onboarded)} onboarded`),
      tile("Available everywhere", fmt(c.available_everywhere), "titles without region limits"),
      tile("Added in 90 days", fmt(c.added_last_90_days), c.newest_added ? `newest ${c.newest_added}` : ""),
      tile("Median film runtime", c.median_runtime_min ? `${fmt(c.median_runtime_min)} min` : "–", "movies and documentaries"),
      tile("Lake partitions", fmt(c.lake_partitions), "days of events"));
    $("catalog-bars").replaceChildren(
      el("div", {}, el("h3", { class: "small muted", text: "Titles by kind" }), bars(c.by_kind)),
      el("div", {}, el("h3", { class: "small muted", text: "Titles by genre (top 12)" }), bars(c.by_genre)),
      el("div", {}, el("h3", { class: "small muted", text: "Users by region" }), bars(c.users_by_region || {})));
  } catch (err) {
    $("catalog-tiles").replaceChildren(el("p", { class: "muted", text: explain(err, "Catalog stats") }));
  }
}

async function loadReports() {
  try {
    const { reports } = await getJSON("/v1/ui/reports");
    if (!reports.length) {
      $("reports").replaceChildren(el("p", { class: "muted" },
        "No report under the data directory. Write one with ",
        el("code", { text: "reelrec evaluate --protocol temporal --report DATA/reports/NAME" }), "."));
      return;
    }
    $("reports").replaceChildren(...reports.map((r) => {
      const plots = el("div", { class: "plots" });
      for (const img of r.images) {
        getBlobURL("/v1/ui/report-file", { report: r.id, name: img.file })
          .then((url) => plots.append(el("img", { src: url, alt: `${img.alt} (${r.title})` })))
          .catch(() => {});
      }
      return el("article", { class: "report" },
        el("h3", { text: r.title || r.id }), el("p", { class: "small muted", text: `${r.id} · ${r.text.slice(0, 2).join(" ")}` }),
        el("table", {}, el("thead", {}, el("tr", {}, r.header.map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, r.rows.map((row) => el("tr", {}, row.map((c) => el("td", { text: c })))))),
        plots);
    }));
  } catch (err) {
    $("reports").replaceChildren(el("p", { class: "muted", text: explain(err, "Reports") }));
  }
}

pollStats();
setInterval(pollStats, POLL_MS);
loadModels();
loadAdherence();
loadCatalog();
loadReports();
