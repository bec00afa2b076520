// Shelves as horizontal rows of title cards, with a roving tab stop: Tab moves between rows,
// the arrow keys move within a row (Up/Down jump to the row above/below), Home/End to its ends,
// Enter or Space opens the title.

import { el } from "./api.js";
import { posterAlt, posterURL } from "./poster.js";

const BADGE = { explore: "Explore", novel: "New for you" };
const KIND_NAME = { movie: "Film", series: "Series", documentary: "Documentary" };

export function renderShelves(container, doc, { onSelect, previous } = {}) {
  const before = new Set();
  if (previous) {
    for (const s of previous.shelves || []) {
      if (s.id === "top-picks") for (const it of s.items) before.add(it.title_id);
    }
  }
  container.replaceChildren();
  const shelves = (doc.shelves || []).filter((s) => s.items && s.items.length);
  if (!shelves.length) {
    container.append(el("p", { class: "empty", text: "This page has no shelves." }));
    return;
  }
  shelves.forEach((shelf, r) => {
    const headingId = `shelf-${r}`;
    const list = el("ul", { class: "row", "aria-labelledby": headingId, "data-shelf": shelf.id });
    shelf.items.forEach((item, i) => {
      const fresh = previous && shelf.id === "top-picks" && !before.has(item.title_id);
      list.append(el("li", { class: fresh ? "fresh" : null }, card(item, shelf, i, r, onSelect)));
    });
    const first = list.querySelector(".card");
    if (first) first.tabIndex = 0;
    container.append(el("section", { class: "shelf", "data-shelf": shelf.id },
      el("h2", { id: headingId }, shelf.title, el("span", { class: "count", text: `${shelf.items.length} titles` })),
      list));
  });
  container.onkeydown = (ev) => onKey(ev, container);
}

function card(item, shelf, index, row, onSelect) {
  const reasonId = `why-${row}-${index}`;
  const kind = KIND_NAME[item.kind] || item.kind;
  const genres = (item.genres || []).join(", ");
  const badge = BADGE[item.slot_kind];
  const label = [item.name, kind, genres, badge && `${badge} slot`].filter(Boolean).join(", ");
  const score = typeof item.score === "number" ? el("span", { class: "score", text: `score ${item.score.toFixed(3)}` }) : null;
  const button = el("button", {
    type: "button", class: "card", tabindex: "-1", "aria-label": label, "aria-describedby": reasonId,
    "data-title": item.title_id, "data-slot": item.slot_kind || "exploit",
    onclick: () => onSelect && onSelect(item, shelf, index),
  },
  el("span", { class: "poster" },
    el("img", { src: posterURL(item), alt: posterAlt(item), width: "200", height: "300", loading: index > 8 ? "lazy" : null }),
    badge ? el("span", { class: `badge ${item.slot_kind}`, text: badge }) : null,
    el("span", { class: "reason", id: reasonId, role: "tooltip" }, item.reason || "", score)),
  el("span", { class: "meta" },
    el("span", { class: "name", text: item.name }),
    el("span", { class: "sub", text: [kind, genres].filter(Boolean).join(" · ") })));
  button.addEventListener("focus", () => {
    const ul = button.closest(".row");
    for (const c of ul.querySelectorAll(".card")) c.tabIndex = c === button ? 0 : -1;
    button.scrollIntoView({ block: "nearest", inline: "nearest" });
  });
  return button;
}

function onKey(ev, container) {
  const current = ev.target.closest && ev.target.closest(".card");
  if (!current) return;
  const row = current.closest(".row");
  const cards = [...row.querySelectorAll(".card")];
  const i = cards.indexOf(current);
  let target = null;
  if (ev.key === "ArrowRight") target = cards[Math.min(i + 1, cards.length - 1)];
  else if (ev.key === "ArrowLeft") target = cards[Math.max(i - 1, 0)];
  else if (ev.key === "Home") target = cards[0];
  else if (ev.key === "End") target = cards[cards.length - 1];
  else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    const rows = [...container.querySelectorAll(".row")];
    const other = rows[rows.indexOf(row) + (ev.key === "ArrowDown" ? 1 : -1)];
    if (other) {
      const oc = [...other.querySelectorAll(".card")];
      target = oc[Math.min(i, oc.length - 1)];
    }
  }
  if (target) {
    ev.preventDefault();
    target.focus();
  }
}

export function topPicks(doc) {
  const s = (doc.shelves || []).find((x) => x.id === "top-picks");
  return s ? s.items : [];
}
