// Poster art made here, as SVG: the same title always gets the same poster. Colours come from
// its genres, the motif from its kind (film: a spotlight and rays, series: episode bars,
// documentary: a lens of rings), the layout from a hash of its id. No image leaves the page.

const GENRE_HUES = {
  action: 8, adventure: 28, comedy: 46, drama: 262, thriller: 350, crime: 215, romance: 330,
  horror: 0, "sci-fi": 190, fantasy: 285, mystery: 235, animation: 160, family: 95, war: 60,
  western: 32, musical: 310, bollywood: 18, "k-drama": 320, anime: 200, telenovela: 340,
  nature: 120, "true crime": 225, history: 40, science: 180, sports: 140, biography: 270,
  music: 300, travel: 170, documentary: 150,
};

// FNV-1a over UTF-16 code units: small, stable across browsers.
export function hash(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function genreHue(genre) {
  const g = String(genre || "").toLowerCase();
  return g in GENRE_HUES ? GENRE_HUES[g] : hash(g) % 360;
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function wrap(name, width, maxLines) {
  const words = String(name).split(/\s+/).filter(Boolean);
  const lines = [];
  let line = "";
  for (const w of words) {
    const next = line ? `${line} ${w}` : w;
    if (next.length <= width || !line) line = next;
    else { lines.push(line); line = w; }
  }
  if (line) lines.push(line);
  if (lines.length > maxLines) {
    lines.length = maxLines;
    lines[maxLines - 1] = lines[maxLines - 1].slice(0, width - 1).trimEnd() + "…";
  }
  return lines.map((l) => (l.length > width + 2 ? l.slice(0, width + 1) + "…" : l));
}

const KIND_LABEL = { movie: "FILM", series: "SERIES", documentary: "DOCUMENTARY" };

export function posterSVG(item) {
  const id = String(item.title_id || item.name || "");
  const r = rng(hash(id));
  const genres = item.genres && item.genres.length ? item.genres : [item.kind || "drama"];
  const h1 = genreHue(genres[0]);
  const h2 = genres.length > 1 ? genreHue(genres[1]) : (h1 + 40 + Math.floor(r() * 40)) % 360;
  const angle = Math.floor(r() * 360);
  const parts = [];
  parts.push(`<defs><linearGradient id="g" gradientTransform="rotate(${angle} .5 .5)">` +
    `<stop offset="0" stop-color="hsl(${h1} 62% 38%)"/><stop offset="1" stop-color="hsl(${h2} 58% 18%)"/>` +
    `</linearGradient><linearGradient id="f" x1="0" y1="0" x2="0" y2="1">` +
    `<stop offset=".45" stop-color="#000" stop-opacity="0"/><stop offset="1" stop-color="#000" stop-opacity=".82"/>` +
    `</linearGradient></defs>`);
  parts.push(`<rect width="200" height="300" fill="url(#g)"/>`);
  const accent = `hsl(${(h1 + 180) % 360} 70% 70%)`;
  if (item.kind === "series") {
    const n = 4 + Math.floor(r() * 4);
    const y0 = 40 + r() * 40;
    for (let i = 0; i < n; i++) {
      const w = 60 + r() * 110;
      parts.push(`<rect x="${(200 - w) / 2}" y="${y0 + i * 20}" width="${w.toFixed(1)}" height="11" rx="5" ` +
        `fill="${i % 2 ? accent : "#fff"}" opacity="${(0.18 + r() * 0.35).toFixed(2)}"/>`);
    }
  } else if (item.kind === "documentary") {
    const cx = 50 + r() * 100, cy = 80 + r() * 60;
    for (let i = 5; i >= 1; i--) {
      parts.push(`<circle cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="${i * 16}" fill="none" ` +
        `stroke="${i % 2 ? accent : "#fff"}" stroke-width="${(2 + r() * 5).toFixed(1)}" opacity="${(0.2 + i * 0.06).toFixed(2)}"/>`);
    }
  } else {
    const cx = 30 + r() * 140, cy = 50 + r() * 90, rad = 28 + r() * 40;
    for (let i = 0; i < 9; i++) {
      const a = (i / 9) * Math.PI * 2 + r() * 0.3;
      parts.push(`<line x1="${cx.toFixed(1)}" y1="${cy.toFixed(1)}" x2="${(cx + Math.cos(a) * 260).toFixed(1)}" ` +
        `y2="${(cy + Math.sin(a) * 260).toFixed(1)}" stroke="#fff" stroke-width="${(4 + r() * 10).toFixed(1)}" opacity=".08"/>`);
    }
    parts.push(`<circle cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="${rad.toFixed(1)}" fill="${accent}" opacity=".55"/>`);
  }
  parts.push(`<rect width="200" height="300" fill="url(#f)"/>`);
  parts.push(`<text x="14" y="26" font-family="system-ui, DejaVu Sans, sans-serif" font-size="11" font-weight="700" ` +
    `letter-spacing="2" fill="#fff" opacity=".85">${KIND_LABEL[item.kind] || "TITLE"}</text>`);
  const lines = wrap(item.name || id, 14, 3);
  const size = lines.some((l) => l.length > 11) ? 20 : 24;
  const y0 = 282 - (lines.length - 1) * (size + 3);
  lines.forEach((l, i) => {
    parts.push(`<text x="14" y="${y0 + i * (size + 3)}" font-family="system-ui, DejaVu Sans, sans-serif" ` +
      `font-size="${size}" font-weight="800" fill="#fff">${esc(l)}</text>`);
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 300" width="200" height="300">${parts.join("")}</svg>`;
}

export function posterURL(item) {
  return "data:image/svg+xml;charset=utf-8," + encodeURIComponent(posterSVG(item));
}

export function posterAlt(item) {
  const kind = item.kind === "movie" ? "film" : item.kind;
  const g = (item.genres || []).join(", ");
  return `Poster of ${item.name}, a ${kind}${g ? ` (${g})` : ""}`;
}
