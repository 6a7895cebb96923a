// The filters panel: category and brand facets from /v1/facets, the price range, "in stock
// only", the rerank toggle, and the filter values a search sends.

import { getFacets } from "./api.js";
import { el, h } from "./dom.js";
import { setIndexVersion, showError, showMessage } from "./results.js";
import { state } from "./state.js";

function checkedValues(container) {
  return [...container.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
}

// "" -> null (no bound); a number of 0 or more; anything else -> NaN (reported, not sent).
function readPrice(input) {
  const raw = input.value.trim();
  if (raw === "") return null;
  const n = Number(raw);
  return Number.isFinite(n) && n >= 0 ? n : NaN;
}

export function currentFilters() {
  return {
    category: checkedValues(el.facetCategory),
    brand: checkedValues(el.facetBrand),
    price_min: readPrice(el.priceMin),
    price_max: readPrice(el.priceMax),
    availability: el.inStock.checked ? ["in_stock"] : [],
  };
}

// Why these filters cannot be sent, or "".
export function filtersProblem(f) {
  if (Number.isNaN(f.price_min) || Number.isNaN(f.price_max)) return "Prices must be numbers of 0 or more.";
  if (f.price_min !== null && f.price_max !== null && f.price_min > f.price_max) {
    return "The minimum price is above the maximum price.";
  }
  return "";
}

// The API's FiltersIn: only the filters that are set.
export function filtersBody(f) {
  const body = {};
  if (f.category.length) body.category = f.category;
  if (f.brand.length) body.brand = f.brand;
  if (f.price_min !== null) body.price_min = f.price_min;
  if (f.price_max !== null) body.price_max = f.price_max;
  if (f.availability.length) body.availability = f.availability;
  return body;
}

export function rerankOn() {
  return !el.rerankToggle.hidden && el.rerank.checked;
}

// The badge with the number of active filters, the clear button and the price hint.
export function updateFilterSummary() {
  const f = currentFilters();
  const n = f.category.length + f.brand.length + (f.price_min !== null ? 1 : 0) + (f.price_max !== null ? 1 : 0)
    + (f.availability.length ? 1 : 0);
  el.filterCount.hidden = n === 0;
  el.filterCount.textContent = String(n);
  el.filterCount.setAttribute("aria-label", `${n} active`);
  el.clearFilters.disabled = n === 0;
  const problem = filtersProblem(f);
  el.priceHint.textContent = problem;
  el.priceHint.classList.toggle("invalid", Boolean(problem));
  if (!problem && el.priceHint.dataset.range) el.priceHint.textContent = el.priceHint.dataset.range;
}

export function clearFilters() {
  for (const c of document.querySelectorAll(".facet input[type=checkbox]")) c.checked = false;
  el.priceMin.value = "";
  el.priceMax.value = "";
  el.inStock.checked = false;
}

// Re-rendering keeps what is ticked (the values come back after a new index is published).
function renderFacet(container, name, values) {
  if (!values.length) {
    container.replaceChildren(h("p", { class: "muted small" }, "No values"));
    return;
  }
  const checked = new Set(checkedValues(container));
  container.replaceChildren(...values.map(({ value, count }) =>
    h("label", { class: "check" },
      h("input", { type: "checkbox", name, value, checked: checked.has(value) }),
      h("span", { class: "check-label" }, value),
      h("span", { class: "check-count" }, String(count)))));
}

function renderPriceRange(price) {
  if (price.min === null || price.max === null || price.min === undefined) return;
  el.priceMin.placeholder = `Min ${Math.floor(price.min)}`;
  el.priceMax.placeholder = `Max ${Math.ceil(price.max)}`;
  el.priceHint.dataset.range = `Catalog prices ${Math.floor(price.min)} – ${Math.ceil(price.max)}`;
  el.priceHint.textContent = el.priceHint.dataset.range;
}

// The first categories as one-click searches on the welcome screen.
function renderSuggestions(facets, onSuggestion) {
  const words = (facets.category || []).slice(0, 6).map((c) => c.value);
  el.suggestions.replaceChildren(...words.map((word) =>
    h("button", { type: "button", class: "chip", onclick: () => onSuggestion(word) }, word)));
}

function showFacetsUnavailable(err) {
  const msg = h("p", { class: "muted small" }, "Filters are unavailable.");
  el.facetCategory.replaceChildren(msg);
  el.facetBrand.replaceChildren(msg.cloneNode(true));
  if (!state.query) showError(err, "facets"); // a search's own message wins
}

// Load (or refresh) the filter values. onSuggestion(word) runs a suggested search.
export async function loadFacets({ onSuggestion }) {
  if (state.facetsLoading) return;
  state.facetsLoading = true;
  try {
    const facets = await getFacets();
    state.facetsVersion = facets.index_version || null;
    renderFacet(el.facetCategory, "category", facets.category || []);
    renderFacet(el.facetBrand, "brand", facets.brand || []);
    renderPriceRange(facets.price || {});
    setIndexVersion(facets.index_version);
    el.rerankToggle.hidden = !facets.reranker;
    renderSuggestions(facets, onSuggestion);
    if (!facets.index_version && !state.query) {
      showMessage("info", "No index is published yet",
        "Build one with `catalens index build --catalog <file>`; searches work as soon as it is active.");
    }
  } catch (err) {
    showFacetsUnavailable(err);
  } finally {
    state.facetsLoading = false;
  }
}

// onChange runs when any filter changes; typing a price waits a little (or Enter) first.
export function wireFilters({ onChange, debounceMs }) {
  el.rerank.addEventListener("change", onChange);
  el.mode.addEventListener("change", onChange);
  el.facetCategory.addEventListener("change", onChange);
  el.facetBrand.addEventListener("change", onChange);
  el.inStock.addEventListener("change", onChange);
  for (const input of [el.priceMin, el.priceMax]) {
    input.addEventListener("input", () => {
      clearTimeout(state.priceTimer);
      updateFilterSummary();
      state.priceTimer = setTimeout(onChange, debounceMs);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault();
      clearTimeout(state.priceTimer);
      onChange();
    });
  }
  el.clearFilters.addEventListener("click", () => {
    clearFilters();
    onChange();
  });
}
