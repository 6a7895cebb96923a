// Queries and searches: what is being searched (state.query), the query chip and context bar
// that show it, the URL that bookmarks it, and the one search in flight.

import { ApiError, describePhoto, searchImage, searchMix, searchSimilar, searchText } from "./api.js";
import { el, h, humanSize, isWide, svgIcon } from "./dom.js";
import { openDetails } from "./details.js";
import { currentFilters, filtersBody, filtersProblem, loadFacets, rerankOn, updateFilterSummary } from "./filters.js";
import {
  clearResults, doneLoading, hideMessage, renderResults, showError, showLoading, showMessage, showSearchError,
} from "./results.js";
import { state } from "./state.js";

const DEFAULT_K = 24;

// What the result cards do when clicked.
const cardHandlers = {
  onOpen: (productId, opener) => openDetails(productId, opener, { onSimilar: runSimilar }),
  onSimilar: (result) => runSimilar(result),
};

export function refreshFacets() {
  return loadFacets({
    onSuggestion: (word) => {
      el.q.value = word;
      runText(word);
    },
  });
}

// ---------- the query and what shows it ----------

function setQuery(next) {
  const prev = state.query;
  if (prev && prev.url && (!next || next.url !== prev.url)) URL.revokeObjectURL(prev.url);
  state.query = next;
  renderQueryChip();
  renderContext();
}

function renderQueryChip() {
  const q = state.query;
  const isImage = Boolean(q && (q.kind === "image" || q.kind === "mix"));
  el.describeBar.hidden = !isImage;
  if (!isImage || (q && q.url !== state.describedUrl)) el.description.replaceChildren();
  el.chip.hidden = !isImage;
  el.box.classList.toggle("has-image", isImage);
  if (isImage) {
    const name = q.file.name || "pasted image";
    el.chipImg.src = q.url;
    el.chipImg.alt = `Query image ${q.file.name || ""}`.trim();
    el.chipImg.classList.remove("broken");
    el.chipLabel.textContent = name;
    el.chipLabel.title = `${name} (${humanSize(q.file.size)})`;
  } else {
    el.chipImg.removeAttribute("src");
  }
  setPlaceholder();
}

export function setPlaceholder() {
  const q = state.query;
  if (q && (q.kind === "image" || q.kind === "mix")) el.q.placeholder = "refine this photo with words, e.g. +blue -dots";
  else el.q.placeholder = isWide() ? "Search products, e.g. “red striped mug”" : "Search products";
}

// "More like <product>" above the results, with a way back.
function renderContext() {
  const q = state.query;
  if (!q || q.kind !== "similar") {
    el.context.hidden = true;
    el.context.replaceChildren();
    return;
  }
  el.context.hidden = false;
  el.context.replaceChildren(
    q.thumb ? h("img", { src: q.thumb, alt: "", width: 40, height: 40 }) : null,
    h("span", {}, "More like ", h("strong", {}, q.title || q.id)),
    h("button", { type: "button", class: "icon-button small", "aria-label": "Back to search",
      title: "Back to search", onclick: clearQuery },
    svgIcon("M6 6l12 12M18 6L6 18")));
}

// ?q=<text> or ?like=<product id>, so a search can be bookmarked and reloaded.
function updateUrl() {
  const q = state.query;
  const url = new URL(window.location.href);
  if (q && q.kind === "text") url.searchParams.set("q", q.text);
  else url.searchParams.delete("q");
  if (q && q.kind === "similar") url.searchParams.set("like", q.id);
  else url.searchParams.delete("like");
  history.replaceState(null, "", url);
}

// ---------- starting a search ----------

export function clearQuery() {
  clearTimeout(state.debounceTimer);
  if (state.inflight) state.inflight.abort();
  setQuery(null);
  el.q.value = "";
  clearResults();
  updateUrl();
  el.q.focus();
}

export function runText(text) {
  const trimmed = text.trim();
  clearTimeout(state.debounceTimer);
  if (!trimmed) return;
  const q = state.query;
  if (q && (q.kind === "image" || q.kind === "mix")) {
    // Words typed beside a photo refine it ("like this, but blue") instead of replacing it.
    setQuery({ kind: "mix", file: q.file, url: q.url, words: trimmed });
    search();
    return;
  }
  setQuery({ kind: "text", text: trimmed });
  updateUrl();
  search();
}

// Refuse what the server would refuse, with its error codes, before uploading anything.
function imageProblem(file) {
  const config = state.config;
  const what = `“${file.name || "pasted image"}”`;
  const accepted = config ? config.image_formats : null;
  if (file.type && (accepted ? !accepted.includes(file.type) : !file.type.startsWith("image/"))) {
    return new ApiError(0, "unsupported_image", `${what} is ${file.type}`);
  }
  if (config && file.size > config.max_upload_bytes) {
    return new ApiError(0, "payload_too_large",
      `${what} is ${humanSize(file.size)}; this server takes images up to ${humanSize(config.max_upload_bytes)}`);
  }
  return null;
}

export function runImage(file) {
  if (!file) return;
  const problem = imageProblem(file);
  if (problem) {
    showError(problem, "upload"); // the current results stay
    return;
  }
  clearTimeout(state.debounceTimer);
  el.q.value = "";
  setQuery({ kind: "image", file, url: URL.createObjectURL(file) });
  updateUrl();
  search();
}

export function runSimilar(product) {
  clearTimeout(state.debounceTimer);
  el.q.value = "";
  setQuery({ kind: "similar", id: product.product_id, title: product.title, thumb: product.thumbnail_url });
  updateUrl();
  search();
  el.results.focus({ preventScroll: true });
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// A filter changed: update its summary and search again with it.
export function rerun() {
  updateFilterSummary();
  if (state.query) search();
}

// ---------- describing the photo ----------

// The answer's facets (every key that is {value, p}), a caption and a title; the category
// filter is set to the guess when the catalog has it, and the search runs again.
export async function describeCurrentPhoto() {
  const q = state.query;
  if (!q || !q.file) return;
  el.describeButton.disabled = true;
  el.description.textContent = "Describing…";
  try {
    const data = await describePhoto({ file: q.file });
    state.describedUrl = q.url;
    const facets = Object.entries(data).filter(([, v]) => v && typeof v === "object" && "p" in v);
    el.description.replaceChildren(
      h("p", { class: "description-title" }, data.title),
      data.caption ? h("p", { class: "muted small" }, `Caption: ${data.caption}`) : null,
      h("ul", { class: "description-facets" }, ...facets.map(([name, g]) =>
        h("li", { "data-facet": name }, `${name.replace(/_/g, " ")}: `,
          h("strong", {}, g.value === null ? "none" : g.value), ` (${Math.round(g.p * 100)}%)`))));
    const category = data.category && data.category.value;
    const box = category && [...el.facetCategory.querySelectorAll("input[type=checkbox]")]
      .find((c) => c.value === category);
    if (box && !box.checked) {
      box.checked = true;
      rerun();
    }
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    el.description.replaceChildren();
    showError(err, "upload");
  } finally {
    el.describeButton.disabled = false;
  }
}

// ---------- the search itself ----------

function requestFor(query, k, filters, signal) {
  if (query.kind === "text") {
    return searchText({ text: query.text, k, filters, rerank: rerankOn(), mode: el.mode.value }, signal);
  }
  if (query.kind === "mix") {
    return searchMix({ file: query.file, words: query.words, k, filters, rerank: rerankOn() }, signal);
  }
  if (query.kind === "image") return searchImage({ file: query.file, k, filters, rerank: rerankOn() }, signal);
  return searchSimilar({ productId: query.id, k, filters }, signal);
}

// Run state.query with the current filters; a newer search aborts this one, and an answer
// that arrives after a newer search started is dropped.
export async function search() {
  const query = state.query;
  if (!query) return;
  const filters = currentFilters();
  const problem = filtersProblem(filters);
  if (problem) {
    showMessage("error", "Check the price filter", problem);
    return;
  }
  const k = Number(el.k.value) || DEFAULT_K;
  const body = filtersBody(filters);
  const id = ++state.requestId;
  if (state.inflight) state.inflight.abort();
  const controller = new AbortController();
  state.inflight = controller;

  showLoading();
  try {
    const data = await requestFor(query, k, body, controller.signal);
    if (id !== state.requestId) return;
    hideMessage();
    renderResults(data, { handlers: cardHandlers, filtered: Object.keys(body).length > 0 });
    // A new index version was published: refresh the filter values (keeping what is ticked).
    if (data.index_version && data.index_version !== state.facetsVersion) {
      state.facetsVersion = data.index_version;
      refreshFacets();
    }
  } catch (err) {
    if (err.name === "AbortError" || id !== state.requestId) return;
    if (!(err instanceof ApiError)) throw err; // a bug in the page: let it surface
    showSearchError(err, query.kind === "image" || query.kind === "mix" ? "upload" : "search");
  } finally {
    if (id === state.requestId) {
      doneLoading();
      state.inflight = null;
    }
  }
}
