// What the homepage preview and onboarding share: the context switchers, the status line, the
// live update message, and the loop of "act on a title, wait for the new page, redraw it".

import { el } from "./api.js";
import { renderShelves } from "./shelves.js";
import { perform, watchDialog } from "./watch.js";

const MODE_TEXT = { personal: "personal", cold_start: "cold start", fallback: "fallback" };

export function contextControls(onChange) {
  const ids = ["device", "hour", "region"];
  const params = new URLSearchParams(location.search);
  for (const id of ids) {
    const sel = document.getElementById(id);
    const v = params.get(id);
    if (v !== null) ensureOption(sel, v).selected = true;
    sel.addEventListener("change", onChange);
  }
  return () => Object.fromEntries(ids.map((id) => [id, document.getElementById(id).value]));
}

function ensureOption(select, value) {
  let opt = [...select.options].find((o) => o.value === value);
  if (!opt) { opt = el("option", { value }, value); select.append(opt); }
  return opt;
}

export function fillRegions(select, regions) {
  for (const r of regions) ensureOption(select, r);
}

export function syncURL(values) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(values)) if (v !== "" && v !== null && v !== undefined) params.set(k, v);
  history.replaceState(null, "", `${location.pathname}${params.toString() ? "?" + params : ""}`);
}

export function renderStatus(node, doc) {
  const at = new Date(doc.generated_at);
  node.replaceChildren(
    el("span", {}, "User ", el("strong", { id: "status-user", text: doc.user_id })),
    el("span", { class: `pill mode-${doc.mode}`, id: "mode", "data-mode": doc.mode, text: MODE_TEXT[doc.mode] || doc.mode }),
    el("span", { class: "muted" }, "model ", el("strong", { text: doc.model_version || "–" })),
    el("span", { class: "muted", id: "generated", "data-generated": doc.generated_at },
      "generated ", Number.isNaN(at.getTime()) ? doc.generated_at : at.toLocaleTimeString()),
    el("span", { class: "muted", text: `${(doc.shelves || []).length} shelves` }));
}

export function notice(node, text, kind = "") {
  node.replaceChildren(text ? el("p", { class: `notice ${kind}` }, text) : "");
}

// Wires shelves, the watch dialog and live updates for one user; returns ``show(doc)``.
export function livePage({ shelvesNode, statusNode, updateNode, getUser, getContext, onNewPage }) {
  let current = null;
  let busy = false;
  const show = (doc, previous = null) => {
    current = doc;
    renderStatus(statusNode, doc);
    renderShelves(shelvesNode, doc, { onSelect: open, previous });
  };
  const report = ({ state, text }) => {
    updateNode.className = `update ${state === "done" ? "" : state}`;
    updateNode.dataset.state = state;
    updateNode.textContent = text;
  };
  const open = watchDialog(async (action, item, shelf, index) => {
    if (busy || !current) return;
    busy = true;
    const before = current;
    try {
      const doc = await perform(action, item, shelf, index,
        { user: getUser(), ctx: getContext(), current, show: report });
      if (doc) {
        show(doc, before);
        if (onNewPage) onNewPage(doc, before, action);
        const again = shelvesNode.querySelector(`.card[data-title="${CSS.escape(item.title_id)}"]`);
        (again || shelvesNode.querySelector(".card[tabindex='0']"))?.focus({ preventScroll: true });
      }
    } catch (err) {
      report({ state: "failed", text: `Failed: ${err.message}` });
    } finally {
      busy = false;
    }
  });
  return { show, report, current: () => current };
}
