// The page's elements and small DOM and formatting helpers shared by every module.

export const $ = (sel, root = document) => root.querySelector(sel);

// Every element the scripts touch, looked up once (modules run after the document is parsed).
export const el = {
  form: $("#search-form"),
  q: $("#q"),
  box: $("#search-box"),
  imageButton: $("#image-button"),
  imageInput: $("#image-input"),
  chip: $("#query-chip"),
  chipImg: $("#query-chip-img"),
  chipLabel: $("#query-chip-label"),
  chipClear: $("#query-chip-clear"),
  filtersPanel: $("#filters-panel"),
  filterCount: $("#filter-count"),
  facetCategory: $("#facet-category"),
  facetBrand: $("#facet-brand"),
  priceMin: $("#price-min"),
  priceMax: $("#price-max"),
  priceHint: $("#price-hint"),
  inStock: $("#in-stock"),
  clearFilters: $("#clear-filters"),
  rerank: $("#rerank"),
  rerankToggle: $("#rerank-toggle"),
  mode: $("#mode"),
  noMatch: $("#no-match"),
  describeBar: $("#describe-bar"),
  describeButton: $("#describe-button"),
  description: $("#description"),
  k: $("#k"),
  context: $("#context"),
  status: $("#status"),
  message: $("#message"),
  results: $("#results"),
  welcome: $("#welcome"),
  suggestions: $("#suggestions"),
  indexVersion: $("#index-version"),
  dropOverlay: $("#drop-overlay"),
  details: $("#details"),
  detailsBody: $("#details-body"),
  detailsClose: $("#details-close"),
  cardTemplate: $("#card-template"),
};

// h("p", {class: "x", onclick: fn}, "text", child) -> <p class="x">text…</p>; null children are skipped.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svgIcon(d) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  svg.append(path);
  return svg;
}

// `backticks` in messages become <code>.
export function renderCode(text) {
  return text.split(/(`[^`]+`)/).map((part) =>
    part.startsWith("`") && part.endsWith("`") && part.length > 2 ? h("code", {}, part.slice(1, -1)) : part);
}

// The layout breakpoint lives in style.css only: its narrow media query sets --layout: narrow.
export function isWide() {
  return getComputedStyle(document.documentElement).getPropertyValue("--layout").trim() !== "narrow";
}

const priceFormats = new Map(); // currency -> formatter (Intl formatters are costly to build)
export function formatPrice(price, currency) {
  if (price === null || price === undefined) return "";
  const cur = currency || "";
  if (!priceFormats.has(cur)) {
    let fmt;
    try {
      fmt = cur ? new Intl.NumberFormat(undefined, { style: "currency", currency: cur })
        : new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    } catch {
      fmt = { format: (v) => `${v.toFixed(2)} ${cur}`.trim() };
    }
    priceFormats.set(cur, fmt);
  }
  return priceFormats.get(cur).format(price);
}

export function formatMs(ms) {
  if (typeof ms !== "number") return "";
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

export function humanSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// ["image/jpeg", "image/png", "image/gif"] -> "JPEG, PNG or GIF"
export function formatNames(mimeTypes) {
  const names = mimeTypes.map((m) => (m.split("/")[1] || m).toUpperCase());
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names.at(-1)}` : names.join("");
}

// A product's availability as a shopper reads it.
export function availabilityLabel(value) {
  return { in_stock: "In stock", out_of_stock: "Out of stock", preorder: "Preorder", backorder: "Backorder" }[value]
    || value;
}
