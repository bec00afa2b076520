// Onboarding: a new user picks 3-5 genres (at most 5 taps: three picks and "Show my page", or
// five picks, the fifth of which submits), sees the cold-start page at once, then watches titles
// until the page turns personal.

import { el, getJSON, homepage, newId, sendJSON, wireKeyForm } from "./api.js";
import { contextControls, fillRegions, livePage, notice, syncURL } from "./page.js";

wireKeyForm();
const $ = (id) => document.getElementById(id);
const MIN = 3, MAX = 5;
const user = new URLSearchParams(location.search).get("user") || newId("new-").slice(0, 12);
const picks = [];
let watches = 0;
let onboarded = false;

$("user-id").textContent = user;
const getContext = contextControls(async () => {
  syncURL({ user, ...getContext() });
  if (onboarded) live.show(await homepage(user, getContext()));
});
syncURL({ user, ...getContext() });

const live = livePage({
  shelvesNode: $("shelves"), statusNode: $("status"), updateNode: $("update"),
  getUser: () => user, getContext,
  onNewPage: (doc, before, action) => {
    if (action === "complete" || action === "abandon") watches += 1;
    if (doc.mode === "personal" && before.mode !== "personal") {
      notice($("notice"), `Your page is personal now, after ${watches} watch${watches === 1 ? "" : "es"}.`, "ok");
    } else if (doc.mode !== "personal") {
      notice($("notice"), `${watches} watch${watches === 1 ? "" : "es"} so far; the page is still ${doc.mode.replace("_", " ")}. Watch another title.`);
    }
  },
});

function label(name) {
  return name.charAt(0).toUpperCase() + name.slice(1);
}

function updatePicked() {
  $("picked").textContent = `${picks.length} of ${MIN}–${MAX} picked`;
  $("submit").disabled = picks.length < MIN || onboarded;
  for (const chip of document.querySelectorAll(".chip")) {
    const on = picks.includes(chip.dataset.genre);
    chip.setAttribute("aria-pressed", String(on));
    chip.disabled = onboarded || (!on && picks.length >= MAX);
  }
}

async function submit() {
  if (onboarded || picks.length < MIN) return;
  onboarded = true;
  updatePicked();
  try {
    const ctx = getContext();
    const body = { genres: picks, region: ctx.region || undefined, device: ctx.device || undefined };
    live.show(await sendJSON("POST", `/v1/users/${encodeURIComponent(user)}/onboarding`, body));
    notice($("notice"), `Your first page, from ${picks.map(label).join(", ")}. Open a title to watch it; after two or three watches the page turns personal.`);
    document.querySelector("#shelves .card[tabindex='0']")?.focus();
  } catch (err) {
    onboarded = false;
    updatePicked();
    notice($("notice"), `Onboarding failed: ${err.message}`);
  }
}

function toggle(name) {
  const i = picks.indexOf(name);
  if (i >= 0) picks.splice(i, 1);
  else if (picks.length < MAX) picks.push(name);
  updatePicked();
  if (picks.length === MAX) submit();
}

$("submit").addEventListener("click", submit);

(async () => {
  try {
    const [g, u] = await Promise.all([getJSON("/v1/ui/genres"), getJSON("/v1/ui/users", { limit: 1 })]);
    fillRegions($("region"), u.regions);
    $("genres").replaceChildren(...g.genres.map((x) => el("li", {}, el("button", {
      type: "button", class: "chip", "data-genre": x.name, "aria-pressed": "false",
      onclick: () => toggle(x.name),
    }, label(x.name), el("span", { class: "n", "aria-hidden": "true", text: x.titles })))));
    updatePicked();
  } catch (err) {
    notice($("notice"), `Could not load the genres: ${err.message}`);
  }
})();
