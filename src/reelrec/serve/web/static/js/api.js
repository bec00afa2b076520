// The API as the pages use it: JSON calls with the optional API key, event ids, errors as text.

const KEY_STORE = "reelrec.apiKey";

export function apiKey() {
  try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

export function setApiKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
  } catch { /* storage may be off; the key then lasts for this page only */ }
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? `${status}: ${body.detail}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

export async function getJSON(path, params) {
  const q = params ? query(params) : "";
  const res = await fetch(q ? `${path}?${q}` : path, { headers: headers(), cache: "no-store" });
  return parse(res);
}

export async function sendJSON(method, path, body) {
  const res = await fetch(path, {
    method, headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
  });
  return parse(res);
}

export async function getBlobURL(path, params) {
  const res = await fetch(`${path}?${query(params)}`, { headers: headers() });
  if (!res.ok) throw new ApiError(res.status, null);
  return URL.createObjectURL(await res.blob());
}

async function parse(res) {
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, typeof body === "object" ? body : { detail: body });
  return body;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  return q.toString();
}

// Event ids are made here so that a retried POST is deduplicated by the API. crypto.randomUUID
// exists only in secure contexts; getRandomValues works on plain http from another host too.
export function newId(prefix = "") {
  if (globalThis.crypto && crypto.randomUUID) return prefix + crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return prefix + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export function homepage(userId, ctx) {
  return getJSON(`/v1/users/${encodeURIComponent(userId)}/homepage`,
    { device: ctx.device, hour: ctx.hour, region: ctx.region });
}

export function postEvents(events) {
  return sendJSON("POST", "/v1/events", events);
}

// The header's API key form, on every page.
export function wireKeyForm() {
  const form = document.getElementById("key-form");
  if (!form) return;
  const input = form.querySelector("input");
  input.value = apiKey();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    setApiKey(input.value.trim());
    location.reload();
  });
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
