// Homepage preview: pick or search a user (or make a new one), switch the context, watch titles.

import { el, getJSON, homepage, newId, wireKeyForm } from "./api.js";
import { contextControls, fillRegions, livePage, notice, syncURL } from "./page.js";

wireKeyForm();
const $ = (id) => document.getElementById(id);
const userInput = $("user");
const results = $("results");
let user = new URLSearchParams(location.search).get("user") || "";

const getContext = contextControls(() => load());
const live = livePage({
  shelvesNode: $("shelves"), statusNode: $("status"), updateNode: $("update"),
  getUser: () => user, getContext,
  onNewPage: (doc, before) => {
    if (doc.mode !== before.mode) notice($("notice"), `The page turned ${doc.mode.replace("_", " ")} (was ${before.mode.replace("_", " ")}).`, "ok");
  },
});

async function load() {
  if (!user) return;
  userInput.value = user;
  syncURL({ user, ...getContext() });
  try {
    const doc = await homepage(user, getContext());
    notice($("notice"), "");
    live.show(doc);
  } catch (err) {
    notice($("notice"), `Could not load the homepage of ${user}: ${err.message}`);
  }
}

let searchTimer = null;
async function search() {
  const q = userInput.value.trim();
  const res = await getJSON("/v1/ui/users", { q, region: $("search-region").value, limit: 8 });
  results.replaceChildren(...res.users.map((u) => el("li", {}, el("button", {
    type: "button", "data-user": u.user_id,
    onclick: () => { user = u.user_id; results.replaceChildren(); load(); },
  }, `${u.user_id}`, el("span", { class: "muted", text: ` · ${u.region || "?"} · ${u.signup_device || "?"}` })))));
  if (q || $("search-region").value) {
    results.append(el("li", { class: "muted small", text: `${res.total.toLocaleString()} match${res.total === 1 ? "" : "es"}` }));
  }
  return res;
}

userInput.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(search, 200);
});
$("search-region").addEventListener("change", search);
$("controls").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const typed = userInput.value.trim();
  if (typed) { user = typed; results.replaceChildren(); load(); }
});
$("new-user").addEventListener("click", () => {
  user = newId("new-").slice(0, 12);
  results.replaceChildren();
  load().then(() => {
    const link = el("a", { href: `/onboarding?user=${encodeURIComponent(user)}` }, "onboard this user");
    $("notice").replaceChildren(el("p", { class: "notice" }, `${user} has no history: this is the cold-start page. `, link, " to pick genres."));
  });
});

(async () => {
  try {
    const first = await getJSON("/v1/ui/users", { limit: 1 });
    fillRegions($("search-region"), first.regions);
    fillRegions($("region"), first.regions);
    if (!user && first.users.length) user = first.users[0].user_id;
  } catch (err) {
    notice($("notice"), `Could not list users: ${err.message}`);
  }
  if (user) await load();
  else notice($("notice"), "No users yet: press “New user”, or simulate a world with `reelrec simulate`.");
})();
