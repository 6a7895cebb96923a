// The result cards, the status line above them and the message box.
// #results carries data-state (idle | loading | done | empty | error) and data-seq (searches
// finished so far): tests and assistive code read them to know when an answer is on screen.

import { $, availabilityLabel, el, formatMs, formatPrice, h, renderCode } from "./dom.js";
import { describeError } from "./errors.js";
import { state } from "./state.js";

const EAGER_IMAGES = 8; // the first cards load at once, the rest lazily

// ---------- messages ----------

export function showMessage(kind, title, text = "", code = "") {
  el.message.hidden = false;
  el.message.className = `message ${kind}`;
  el.message.replaceChildren(
    h("div", { class: "message-icon", "aria-hidden": "true" }, kind === "error" ? "!" : "i"),
    h("div", {},
      h("p", { class: "message-title" }, title),
      text ? h("p", { class: "message-text" }, renderCode(text)) : null,
      code ? h("p", { class: "message-code" }, `error code: ${code}`) : null),
  );
}

export function showError(err, context) {
  const d = describeError(err, context);
  showMessage("error", d.title, d.text, err.code);
}

export function hideMessage() {
  el.message.hidden = true;
  el.message.replaceChildren();
}

export function setIndexVersion(version) {
  if (version) el.indexVersion.textContent = version;
}

// ---------- the results area ----------

export function showLoading() {
  el.results.dataset.state = "loading";
  el.results.setAttribute("aria-busy", "true");
  el.welcome.hidden = true;
  el.status.textContent = "Searching…";
}

export function doneLoading() {
  el.results.removeAttribute("aria-busy");
}

function finish(resultState) {
  el.results.dataset.state = resultState;
  el.results.dataset.seq = String(++state.seq);
}

// A search failed (on the server, or refused before sending): the message replaces the cards.
export function showSearchError(err, context) {
  showError(err, context);
  el.noMatch.hidden = true;
  el.results.replaceChildren();
  el.status.textContent = "";
  finish("error");
}

export function clearResults() {
  hideMessage();
  el.noMatch.hidden = true;
  el.results.replaceChildren();
  el.results.dataset.state = "idle";
  el.status.textContent = "";
  el.welcome.hidden = false;
}

const sep = () => h("span", { class: "status-sep", "aria-hidden": "true" }, "·");

function renderStatus(data, n) {
  el.status.replaceChildren(
    h("span", { class: "status-count" }, n === 1 ? "1 result" : `${n} results`),
    sep(),
    h("span", { class: "status-took", id: "took-ms" }, formatMs(data.took_ms)),
    sep(),
    h("span", { class: "status-version" }, "index ", h("code", {}, data.index_version || "—")),
    ...(data.reranked ? [sep(), h("span", { class: "status-reranked", id: "reranked" }, "reranked")] : []));
}

// data: SearchOut. handlers: {onOpen(productId, opener), onSimilar(result)}; filtered: whether
// filters are active (an empty answer then suggests removing some).
// Above the closest results when none is a good match: they must not read as matches.
function renderNoMatch(data, n) {
  el.noMatch.hidden = !(data.no_good_match && n > 0);
  el.noMatch.replaceChildren(...(el.noMatch.hidden ? [] : [
    h("strong", {}, "No good match."),
    " Nothing in the catalog is quite what you asked for; these are the closest products."]));
}

export function renderResults(data, { handlers, filtered }) {
  const results = data.results || [];
  setIndexVersion(data.index_version);
  renderNoMatch(data, results.length);
  renderStatus(data, results.length);
  el.results.replaceChildren(...results.map((r, i) => renderCard(r, i, handlers)));
  if (results.length === 0) {
    showMessage("info", "No products match",
      filtered ? "Nothing matches this search with the current filters. Try removing some filters."
        : "Try other words or another image.");
    finish("empty");
  } else {
    finish("done");
  }
}

// ---------- cards ----------

function cardImage(card, r, i) {
  const img = $("img", card);
  if (i >= EAGER_IMAGES) img.loading = "lazy";
  // A missing thumbnail falls back to the full image once, then to the "no image" look.
  const fallback = r.image_url;
  img.addEventListener("error", () => {
    if (fallback && img.dataset.fallback !== "1") {
      img.dataset.fallback = "1";
      img.src = fallback;
    } else {
      img.removeAttribute("src");
      img.closest(".card-media").classList.add("no-image");
    }
  });
  if (r.thumbnail_url || r.image_url) img.src = r.thumbnail_url || r.image_url;
  else $(".card-media", card).classList.add("no-image");
}

function cardScore(card, r) {
  const score = $(".card-score", card);
  score.textContent = Number(r.score).toFixed(3);
  score.setAttribute("aria-label", `score ${Number(r.score).toFixed(3)}`);
  if (r.match_probability !== null && r.match_probability !== undefined) {
    card.dataset.matchProbability = String(r.match_probability);
    score.title = `match probability ${Math.round(r.match_probability * 100)}%`;
  }
  if (r.rerank_score !== null && r.rerank_score !== undefined) {
    card.dataset.rerankScore = String(r.rerank_score);
    score.title = `match ${Number(r.rerank_score).toFixed(3)} · similarity ${Number(r.first_stage_score).toFixed(3)}`;
  }
}

// What this product lacks of what the query named (the catalog's columns, as the version's lexicon
// read the words): said on the card, so the closest products are not taken for matches.
function cardDiffers(card, r) {
  const differs = Object.entries(r.facet_mismatch || {})
    .filter(([, v]) => v > 0)
    .map(([column, v]) => column.replace(/_/g, " ") + (v < 1 ? " (partly)" : ""));
  if (!differs.length) return;
  const line = $(".card-differs", card);
  line.textContent = `Differs: ${differs.join(", ")}`;
  line.hidden = false;
  card.dataset.differs = differs.join(",");
}

function renderCard(r, i, { onOpen, onSimilar }) {
  const card = el.cardTemplate.content.firstElementChild.cloneNode(true);
  card.dataset.productId = r.product_id;
  card.dataset.category = r.category || "";
  card.dataset.brand = r.brand || "";
  if (r.price !== null && r.price !== undefined) card.dataset.price = String(r.price);
  card.dataset.score = String(r.score);
  cardImage(card, r, i);

  const open = $(".card-open", card);
  open.textContent = r.title;
  open.addEventListener("click", () => onOpen(r.product_id, open));
  $(".card-brand", card).textContent = [r.brand, r.category].filter(Boolean).join(" · ");
  $(".card-price", card).textContent = formatPrice(r.price, r.currency);
  card.dataset.availability = r.availability || "in_stock";
  if (r.availability && r.availability !== "in_stock") {
    const badge = $(".card-availability", card);
    badge.textContent = availabilityLabel(r.availability);
    badge.hidden = false;
  }
  cardScore(card, r);
  cardDiffers(card, r);

  const more = $(".more-like-this", card);
  more.setAttribute("aria-label", `More like ${r.title}`);
  more.addEventListener("click", (event) => {
    event.stopPropagation();
    onSimilar(r);
  });
  // A click anywhere on the card (not on its buttons) opens the details too.
  card.addEventListener("click", (event) => {
    if (event.target.closest("button")) return;
    onOpen(r.product_id, open);
  });
  return card;
}
