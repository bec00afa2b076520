// "Watching" a title from a page: the events a player would send (play_start, progress,
// complete; or an early abandon; or a thumb), then short polling of the homepage until the speed
// layer has written a new page, timing how long that took.

import { el, getJSON, homepage, newId, postEvents } from "./api.js";
import { posterAlt, posterURL } from "./poster.js";

export const POLL_MS = 250;
export const POLL_LIMIT_MS = 10000;  // generous: a busy machine may be slower than the speed layer's 1 s bar
const ABANDON_S = 300;

async function runtimeSeconds(titleId) {
  try {
    const t = await getJSON(`/v1/titles/${encodeURIComponent(titleId)}`);
    const min = t.kind === "series" ? (t.episode_runtime_min || t.runtime_min) : (t.runtime_min || t.episode_runtime_min);
    if (min) return min * 60;
  } catch { /* the title may be gone; a default length still makes a valid viewing */ }
  return null;
}

// The events of one action, timestamped as if the viewing had just ended now.
export async function eventsFor(action, item, shelf, index, user, ctx) {
  const now = Date.now();
  const base = { user_id: user, title_id: item.title_id, device: ctx.device || undefined, region: ctx.region || undefined };
  const at = (ms) => new Date(ms).toISOString();
  const ev = (type, ms, extra = {}) => ({ event_id: newId("web-"), type, ts: at(ms), ...base, ...extra });
  if (action === "thumbs_up" || action === "thumbs_down") return [ev(action, now)];
  const session = newId("ws-");
  const place = { shelf_id: shelf ? shelf.id : undefined, position: index, slot_kind: item.slot_kind || undefined };
  const runtime = (await runtimeSeconds(item.title_id)) || (item.kind === "series" ? 2700 : 5400);
  if (action === "abandon") {
    const s = Math.min(ABANDON_S, Math.floor(runtime * 0.25));
    return [
      ev("play_start", now - s * 1000, { session_id: session, ...place }),
      ev("progress", now, { session_id: session, position_s: s, watched_s: s }),
    ];
  }
  const half = Math.floor(runtime / 2);
  return [
    ev("play_start", now - runtime * 1000, { session_id: session, ...place }),
    ev("progress", now - (runtime - half) * 1000, { session_id: session, position_s: half, watched_s: half }),
    ev("progress", now - 1, { session_id: session, position_s: runtime, watched_s: runtime }),
    ev("complete", now, { session_id: session }),
  ];
}

// Reads the page every POLL_MS until a stored page newer than ``since`` is served: its
// generated_at differs from ``since`` and the next read returns the same one. The second read
// matters for a user without a cached page, whose cold-start page is composed on every read and
// so carries a new generated_at each time. The time reported is when the new page first showed.
export async function waitForNewPage(user, ctx, since, limitMs = POLL_LIMIT_MS) {
  const t0 = performance.now();
  let seen = null;
  let seenAt = 0;
  while (performance.now() - t0 < limitMs) {
    await new Promise((r) => setTimeout(r, POLL_MS));
    const doc = await homepage(user, ctx);
    if (doc.generated_at === since) { seen = null; continue; }
    if (seen && doc.generated_at === seen.generated_at) return { doc, ms: seenAt - t0 };
    seen = doc;
    seenAt = performance.now();
  }
  return { doc: null, ms: performance.now() - t0 };
}

const ACTIONS = [
  ["complete", "Watch it all", "primary"],
  ["abandon", "Stop after 5 minutes", ""],
  ["thumbs_up", "👍 Thumbs up", ""],
  ["thumbs_down", "👎 Thumbs down", ""],
];

// The dialog; ``act(action, item, shelf, index)`` is called with the chosen action.
export function watchDialog(act) {
  const dialog = el("dialog", { "aria-labelledby": "watch-title" });
  document.body.append(dialog);
  dialog.addEventListener("click", (ev) => { if (ev.target === dialog) dialog.close(); });
  return (item, shelf, index) => {
    const buttons = ACTIONS.map(([action, label, cls]) => el("button", {
      type: "button", class: cls, "data-action": action,
      onclick: () => { dialog.close(); act(action, item, shelf, index); },
    }, label));
    dialog.replaceChildren(el("div", { class: "watch" },
      el("img", { src: posterURL(item), alt: posterAlt(item) }),
      el("div", {},
        el("h2", { id: "watch-title", text: item.name }),
        el("p", { class: "muted", text: [item.kind, (item.genres || []).join(", ")].filter(Boolean).join(" · ") }),
        el("p", { text: item.reason || "" }),
        el("p", { class: "small muted", text: `Shelf “${shelf ? shelf.title : "?"}”, position ${index + 1}, ${item.slot_kind || "exploit"} slot` }),
        el("div", { class: "actions" }, buttons,
          el("button", { type: "button", class: "ghost", onclick: () => dialog.close() }, "Cancel")))));
    dialog.showModal();
    buttons[0].focus();
  };
}

// Sends the action's events, then waits for the new page; reports through ``show``.
export async function perform(action, item, shelf, index, { user, ctx, current, show }) {
  const events = await eventsFor(action, item, shelf, index, user, ctx);
  show({ state: "pending", text: `Sending ${events.length} event${events.length > 1 ? "s" : ""} (${events.map((e) => e.type).join(", ")})…` });
  const res = await postEvents(events);
  if (res.rejected && res.rejected.length) {
    show({ state: "failed", text: `Rejected: ${res.rejected.map((r) => `${r.field} ${r.reason}`).join("; ")}` });
    return null;
  }
  show({ state: "pending", text: `${res.accepted} event${res.accepted > 1 ? "s" : ""} accepted; waiting for the speed layer…` });
  const { doc, ms } = await waitForNewPage(user, ctx, current.generated_at);
  if (!doc) {
    show({ state: "failed", text: `No new page within ${(ms / 1000).toFixed(1)} s` });
    return null;
  }
  show({ state: "done", ms, text: `Page updated ${(ms / 1000).toFixed(2)} s after the events were accepted (read every ${POLL_MS} ms)` });
  return doc;
}
