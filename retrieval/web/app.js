// Catalens search page: plain JavaScript, no build step, talks only to this server's /v1 API.
"use strict";

(() => {
  const DEBOUNCE_MS = 250;
  const wide = window.matchMedia("(min-width: 760px)");
  const EAGER_IMAGES = 8; // the first cards load at once, the rest lazily

  const $ = (sel, root = document) => root.querySelector(sel);
  const el = {
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
    clearFilters: $("#clear-filters"),
    rerank: $("#rerank"),
    rerankToggle: $("#rerank-toggle"),
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

  // The current query: {kind: "text", text} | {kind: "image", file, url} | {kind: "similar", id, title, thumb}
  let query = null;
  let debounceTimer = 0;
  let inflight = null; // AbortController of the running search
  let seq = 0; // increments per finished search (tests and stale-response guard)
  let requestId = 0;
  let detailsOpener = null;
  let facetsVersion = null; // the index version the filter values came from

  // ---------- helpers ----------

  function h(tag, attrs = {}, ...children) {
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

  const priceFormats = new Map();
  function formatPrice(price, currency) {
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

  function formatMs(ms) {
    if (typeof ms !== "number") return "";
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  function humanSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // Every API call goes through here: JSON in, JSON out, {"error": {...}} bodies become ApiError.
  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network_error", "");
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const e = (body && body.error) || {};
      throw new ApiError(response.status, e.code || `http_${response.status}`, e.message || response.statusText);
    }
    return body;
  }

  // A readable explanation for an API error, by status and code.
  function describeError(err, context) {
    const detail = err.message ? `${err.message.charAt(0).toUpperCase()}${err.message.slice(1)}.` : "";
    switch (err.status) {
      case 0:
        return context === "upload"
          ? { title: "The upload did not go through", text: "The server closed the connection. The image may be too large; try a smaller one." }
          : { title: "Cannot reach the Catalens server", text: "Check that `catalens serve` is running, then try again." };
      case 413:
        return { title: "That image is too large", text: `${detail} Try a smaller image.` };
      case 415:
        return { title: "That file is not an image we can read", text: `${detail} Use a JPEG, PNG, WEBP or GIF image.` };
      case 422:
        return { title: context === "upload" ? "That upload cannot be searched" : "That search cannot be run", text: detail };
      case 404:
        return { title: "Not found", text: detail };
      case 503:
        return { title: "The search index is not ready",
          text: `${detail || "No index is loaded yet; build one with \`catalens index build\`."} Search works as soon as an index is published.` };
      default:
        return { title: "Something went wrong", text: `${detail || "The server answered with an error."} (HTTP ${err.status})` };
    }
  }

  function showMessage(kind, title, text = "", code = "") {
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

  // `backticks` in messages become <code>.
  function renderCode(text) {
    return text.split(/(`[^`]+`)/).map((part) =>
      part.startsWith("`") && part.endsWith("`") && part.length > 2 ? h("code", {}, part.slice(1, -1)) : part);
  }

  function hideMessage() {
    el.message.hidden = true;
    el.message.replaceChildren();
  }

  function setIndexVersion(version) {
    if (version) el.indexVersion.textContent = version;
  }

  // ---------- filters ----------

  function checkedValues(container) {
    return [...container.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
  }

  function readPrice(input) {
    const raw = input.value.trim();
    if (raw === "") return null;
    const n = Number(raw);
    return Number.isFinite(n) && n >= 0 ? n : NaN;
  }

  function currentFilters() {
    const f = {
      category: checkedValues(el.facetCategory),
      brand: checkedValues(el.facetBrand),
      price_min: readPrice(el.priceMin),
      price_max: readPrice(el.priceMax),
    };
    return f;
  }

  function filtersProblem(f) {
    if (Number.isNaN(f.price_min) || Number.isNaN(f.price_max)) return "Prices must be numbers of 0 or more.";
    if (f.price_min !== null && f.price_max !== null && f.price_min > f.price_max) {
      return "The minimum price is above the maximum price.";
    }
    return "";
  }

  function filtersBody(f) {
    const body = {};
    if (f.category.length) body.category = f.category;
    if (f.brand.length) body.brand = f.brand;
    if (f.price_min !== null) body.price_min = f.price_min;
    if (f.price_max !== null) body.price_max = f.price_max;
    return body;
  }

  function updateFilterSummary() {
    const f = currentFilters();
    const n = f.category.length + f.brand.length + (f.price_min !== null ? 1 : 0) + (f.price_max !== null ? 1 : 0);
    el.filterCount.hidden = n === 0;
    el.filterCount.textContent = String(n);
    el.filterCount.setAttribute("aria-label", `${n} active`);
    el.clearFilters.disabled = n === 0;
    const problem = filtersProblem(f);
    el.priceHint.textContent = problem;
    el.priceHint.classList.toggle("invalid", Boolean(problem));
    if (!problem && el.priceHint.dataset.range) el.priceHint.textContent = el.priceHint.dataset.range;
  }

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

  let facetsLoading = false;
  async function loadFacets() {
    if (facetsLoading) return;
    facetsLoading = true;
    try {
      const facets = await api("/v1/facets");
      facetsVersion = facets.index_version || null;
      renderFacet(el.facetCategory, "category", facets.category || []);
      renderFacet(el.facetBrand, "brand", facets.brand || []);
      const price = facets.price || {};
      if (price.min !== null && price.max !== null && price.min !== undefined) {
        el.priceMin.placeholder = `Min ${Math.floor(price.min)}`;
        el.priceMax.placeholder = `Max ${Math.ceil(price.max)}`;
        el.priceHint.dataset.range = `Catalog prices ${Math.floor(price.min)} – ${Math.ceil(price.max)}`;
        el.priceHint.textContent = el.priceHint.dataset.range;
      }
      setIndexVersion(facets.index_version);
      el.rerankToggle.hidden = !facets.reranker;
      renderSuggestions(facets);
      if (!facets.index_version && !query) {
        showMessage("info", "No index is published yet",
          "Build one with `catalens index build --catalog <file>`; searches work as soon as it is active.");
      }
    } catch (err) {
      const msg = h("p", { class: "muted small" }, "Filters are unavailable.");
      el.facetCategory.replaceChildren(msg);
      el.facetBrand.replaceChildren(msg.cloneNode(true));
      if (!query) {
        const d = describeError(err, "facets");
        showMessage("error", d.title, d.text, err.code);
      }
    } finally {
      facetsLoading = false;
    }
  }

  function renderSuggestions(facets) {
    const words = (facets.category || []).slice(0, 6).map((c) => c.value);
    el.suggestions.replaceChildren(...words.map((word) =>
      h("button", { type: "button", class: "chip", onclick: () => {
        el.q.value = word;
        runText(word);
      } }, word)));
  }

  // ---------- queries ----------

  function setQuery(next) {
    if (query && query.kind === "image" && (!next || next.url !== query.url)) URL.revokeObjectURL(query.url);
    query = next;
    renderQueryChip();
    renderContext();
  }

  function renderQueryChip() {
    const isImage = query && query.kind === "image";
    el.chip.hidden = !isImage;
    el.box.classList.toggle("has-image", Boolean(isImage));
    if (isImage) {
      el.chipImg.src = query.url;
      el.chipImg.alt = `Query image ${query.file.name || ""}`.trim();
      el.chipImg.classList.remove("broken");
      el.chipLabel.textContent = query.file.name || "pasted image";
      el.chipLabel.title = `${query.file.name || "pasted image"} (${humanSize(query.file.size)})`;
    } else {
      el.chipImg.removeAttribute("src");
    }
    setPlaceholder();
  }

  function setPlaceholder() {
    if (query && query.kind === "image") el.q.placeholder = "or type to search by text";
    else el.q.placeholder = wide.matches ? "Search products, e.g. “red striped mug”" : "Search products";
  }

  function renderContext() {
    if (!query || query.kind !== "similar") {
      el.context.hidden = true;
      el.context.replaceChildren();
      return;
    }
    el.context.hidden = false;
    el.context.replaceChildren(
      query.thumb ? h("img", { src: query.thumb, alt: "", width: 40, height: 40 }) : null,
      h("span", {}, "More like ", h("strong", {}, query.title || query.id)),
      h("button", { type: "button", class: "icon-button small", "aria-label": "Back to search",
        title: "Back to search", onclick: clearQuery },
      svgIcon("M6 6l12 12M18 6L6 18")));
  }

  function svgIcon(d) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.append(path);
    return svg;
  }

  function clearQuery() {
    clearTimeout(debounceTimer);
    if (inflight) inflight.abort();
    setQuery(null);
    el.q.value = "";
    hideMessage();
    el.results.replaceChildren();
    el.results.dataset.state = "idle";
    el.status.textContent = "";
    el.welcome.hidden = false;
    updateUrl();
    el.q.focus();
  }

  function runText(text) {
    const trimmed = text.trim();
    clearTimeout(debounceTimer);
    if (!trimmed) return;
    setQuery({ kind: "text", text: trimmed });
    updateUrl();
    search();
  }

  function runImage(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showMessage("error", "That file is not an image", `“${file.name}” is ${file.type}. Use a JPEG, PNG, WEBP or GIF image.`);
      return;
    }
    clearTimeout(debounceTimer);
    el.q.value = "";
    setQuery({ kind: "image", file, url: URL.createObjectURL(file) });
    updateUrl();
    search();
  }

  function runSimilar(product) {
    clearTimeout(debounceTimer);
    el.q.value = "";
    setQuery({ kind: "similar", id: product.product_id, title: product.title, thumb: product.thumbnail_url });
    updateUrl();
    search();
    el.results.focus({ preventScroll: true });
    window.scrollTo({ top: 0, behavior: "smooth" });
  }

  function rerun() {
    updateFilterSummary();
    if (query) search();
  }

  function updateUrl() {
    const url = new URL(window.location.href);
    if (query && query.kind === "text") url.searchParams.set("q", query.text);
    else url.searchParams.delete("q");
    if (query && query.kind === "similar") url.searchParams.set("like", query.id);
    else url.searchParams.delete("like");
    history.replaceState(null, "", url);
  }

  function rerankOn() {
    return !el.rerankToggle.hidden && el.rerank.checked;
  }

  async function search() {
    if (!query) return;
    const filters = currentFilters();
    const problem = filtersProblem(filters);
    if (problem) {
      showMessage("error", "Check the price filter", problem);
      return;
    }
    const k = Number(el.k.value) || 24;
    const fbody = filtersBody(filters);
    const id = ++requestId;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;

    let path;
    let init = { signal: controller.signal };
    let context = "search";
    if (query.kind === "text") {
      path = "/v1/search/text";
      init = { ...init, method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ query: query.text, k, filters: fbody, rerank: rerankOn() }) };
    } else if (query.kind === "image") {
      const form = new FormData();
      form.append("file", query.file, query.file.name || "pasted-image");
      form.append("k", String(k));
      form.append("filters", JSON.stringify(fbody));
      form.append("rerank", String(rerankOn()));
      path = "/v1/search/image";
      init = { ...init, method: "POST", body: form };
      context = "upload";
    } else {
      const params = new URLSearchParams({ k: String(k) });
      for (const c of fbody.category || []) params.append("category", c);
      for (const b of fbody.brand || []) params.append("brand", b);
      if (fbody.price_min !== undefined) params.set("price_min", String(fbody.price_min));
      if (fbody.price_max !== undefined) params.set("price_max", String(fbody.price_max));
      path = `/v1/products/${encodeURIComponent(query.id)}/similar?${params}`;
    }

    el.results.dataset.state = "loading";
    el.results.setAttribute("aria-busy", "true");
    el.welcome.hidden = true;
    el.status.textContent = "Searching…";
    try {
      const data = await api(path, init);
      if (id !== requestId) return;
      hideMessage();
      renderResults(data);
    } catch (err) {
      if (err.name === "AbortError" || id !== requestId) return;
      const d = describeError(err, context);
      showMessage("error", d.title, d.text, err.code);
      el.results.replaceChildren();
      el.status.textContent = "";
      el.results.dataset.state = "error";
      el.results.dataset.seq = String(++seq);
    } finally {
      if (id === requestId) {
        el.results.removeAttribute("aria-busy");
        inflight = null;
      }
    }
  }

  // ---------- results ----------

  function renderResults(data) {
    const results = data.results || [];
    setIndexVersion(data.index_version);
    // A new index version was published: refresh the filter values (keeping what is ticked).
    if (data.index_version && data.index_version !== facetsVersion) {
      facetsVersion = data.index_version;
      loadFacets();
    }
    const n = results.length;
    const took = formatMs(data.took_ms);
    el.status.replaceChildren(
      h("span", { class: "status-count" }, n === 1 ? "1 result" : `${n} results`),
      h("span", { class: "status-sep", "aria-hidden": "true" }, "·"),
      h("span", { class: "status-took", id: "took-ms" }, took),
      h("span", { class: "status-sep", "aria-hidden": "true" }, "·"),
      h("span", { class: "status-version" }, "index ", h("code", {}, data.index_version || "—")),
      ...(data.reranked ? [h("span", { class: "status-sep", "aria-hidden": "true" }, "·"),
        h("span", { class: "status-reranked", id: "reranked" }, "reranked")] : []));
    el.results.replaceChildren(...results.map(renderCard));
    if (n === 0) {
      const f = filtersBody(currentFilters());
      const filtered = Object.keys(f).length > 0;
      showMessage("info", "No products match",
        filtered ? "Nothing matches this search with the current filters. Try removing some filters."
          : "Try other words or another image.");
      el.results.dataset.state = "empty";
    } else {
      el.results.dataset.state = "done";
    }
    el.results.dataset.seq = String(++seq);
  }

  function renderCard(r, i) {
    const card = el.cardTemplate.content.firstElementChild.cloneNode(true);
    card.dataset.productId = r.product_id;
    card.dataset.category = r.category || "";
    card.dataset.brand = r.brand || "";
    if (r.price !== null && r.price !== undefined) card.dataset.price = String(r.price);
    card.dataset.score = String(r.score);

    const img = $("img", card);
    if (i >= EAGER_IMAGES) img.loading = "lazy";
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

    const open = $(".card-open", card);
    open.textContent = r.title;
    open.addEventListener("click", () => openDetails(r.product_id, open));
    $(".card-brand", card).textContent = [r.brand, r.category].filter(Boolean).join(" · ");
    $(".card-price", card).textContent = formatPrice(r.price, r.currency);
    const score = $(".card-score", card);
    score.textContent = Number(r.score).toFixed(3);
    score.setAttribute("aria-label", `score ${Number(r.score).toFixed(3)}`);
    if (r.rerank_score !== null && r.rerank_score !== undefined) {
      card.dataset.rerankScore = String(r.rerank_score);
      score.title = `match ${Number(r.rerank_score).toFixed(3)} · similarity ${Number(r.first_stage_score).toFixed(3)}`;
    }
    const more = $(".more-like-this", card);
    more.setAttribute("aria-label", `More like ${r.title}`);
    more.addEventListener("click", (event) => {
      event.stopPropagation();
      runSimilar(r);
    });
    // A click anywhere on the card (not on its buttons) opens the details too.
    card.addEventListener("click", (event) => {
      if (event.target.closest("button")) return;
      openDetails(r.product_id, open);
    });
    return card;
  }

  // ---------- details ----------

  async function openDetails(productId, opener) {
    detailsOpener = opener || document.activeElement;
    el.details.dataset.productId = productId;
    el.detailsBody.replaceChildren(h("p", { class: "muted details-loading" }, "Loading product…"));
    if (!el.details.open) el.details.showModal();
    try {
      const p = await api(`/v1/products/${encodeURIComponent(productId)}`);
      if (el.details.dataset.productId !== productId) return;
      renderDetails(p);
    } catch (err) {
      const d = describeError(err, "details");
      el.detailsBody.replaceChildren(
        h("h2", { id: "details-title", class: "details-title" }, d.title),
        h("p", { class: "message-text" }, renderCode(d.text)));
    }
  }

  function renderDetails(p) {
    const images = (p.images || []).filter((img) => img.status === "ok");
    const main = h("img", { class: "details-image", alt: p.title, src: images.length ? images[0].url : null });
    main.addEventListener("error", () => main.classList.add("broken"));
    const gallery = images.length > 1
      ? h("div", { class: "gallery", role: "group", "aria-label": "Product images" },
        images.map((img, idx) => {
          const b = h("button", { type: "button", class: "thumb", "aria-label": `Show image ${idx + 1} of ${images.length}`,
            "aria-pressed": idx === 0 ? "true" : "false" },
          h("img", { src: img.thumbnail_url || img.url, alt: "", width: 64, height: 64 }));
          b.addEventListener("click", () => {
            main.src = img.url;
            main.classList.remove("broken");
            for (const other of b.parentElement.children) other.setAttribute("aria-pressed", "false");
            b.setAttribute("aria-pressed", "true");
          });
          return b;
        }))
      : null;

    const rows = [
      ["Brand", p.brand],
      ["Category", p.category],
      ...Object.entries(p.attributes || {}).map(([key, value]) => [labelise(key), value]),
      ["Product ID", p.product_id],
    ].filter(([, value]) => value !== null && value !== undefined && value !== "");
    const failed = (p.images || []).filter((img) => img.status !== "ok");

    const more = h("button", { type: "button", class: "button primary" }, "More like this");
    more.addEventListener("click", () => {
      el.details.close();
      const first = images[0];
      runSimilar({ product_id: p.product_id, title: p.title, thumbnail_url: first ? first.thumbnail_url : null });
    });

    el.detailsBody.replaceChildren(
      h("div", { class: "details-media" }, main, gallery),
      h("div", { class: "details-info" },
        h("p", { class: "eyebrow" }, [p.brand, p.category].filter(Boolean).join(" · ")),
        h("h2", { id: "details-title", class: "details-title" }, p.title),
        h("p", { class: "details-price" }, formatPrice(p.price, p.currency)),
        p.description ? h("p", { class: "details-description" }, p.description) : null,
        h("dl", { class: "attributes" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
        failed.length ? h("p", { class: "muted small" },
          `${failed.length} image${failed.length > 1 ? "s" : ""} could not be indexed.`) : null,
        h("div", { class: "details-actions" }, more)),
    );
  }

  function labelise(key) {
    const s = key.replace(/[_-]+/g, " ");
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  // ---------- events ----------

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.q.value.trim();
    if (text) runText(text);
    else if (query && query.kind !== "text") search();
    else el.q.focus();
  });

  el.q.addEventListener("input", () => {
    clearTimeout(debounceTimer);
    const text = el.q.value.trim();
    if (!text) return;
    debounceTimer = setTimeout(() => runText(text), DEBOUNCE_MS);
  });

  el.q.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && el.q.value) {
      event.preventDefault();
      el.q.value = "";
    }
  });

  el.imageButton.addEventListener("click", () => el.imageInput.click());
  el.imageInput.addEventListener("change", () => {
    const file = el.imageInput.files && el.imageInput.files[0];
    if (file) runImage(file);
    el.imageInput.value = "";
  });
  el.chipClear.addEventListener("click", clearQuery);
  el.chipImg.addEventListener("error", () => el.chipImg.classList.add("broken"));

  el.rerank.addEventListener("change", rerun);
  el.facetCategory.addEventListener("change", rerun);
  el.facetBrand.addEventListener("change", rerun);
  let priceTimer = 0;
  for (const input of [el.priceMin, el.priceMax]) {
    input.addEventListener("input", () => {
      clearTimeout(priceTimer);
      updateFilterSummary();
      priceTimer = setTimeout(rerun, DEBOUNCE_MS * 2);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        clearTimeout(priceTimer);
        rerun();
      }
    });
  }
  el.clearFilters.addEventListener("click", () => {
    for (const c of document.querySelectorAll(".facet input[type=checkbox]")) c.checked = false;
    el.priceMin.value = "";
    el.priceMax.value = "";
    rerun();
  });
  el.k.addEventListener("change", () => {
    if (query) search();
  });

  // Details dialog: Escape closes (native), so do the close button and a click on the backdrop.
  el.detailsClose.addEventListener("click", () => el.details.close());
  el.details.addEventListener("click", (event) => {
    if (event.target === el.details) el.details.close();
  });
  el.details.addEventListener("close", () => {
    delete el.details.dataset.productId;
    if (detailsOpener && document.contains(detailsOpener)) detailsOpener.focus();
    detailsOpener = null;
  });

  // Drag and drop anywhere on the page.
  let dragDepth = 0;
  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    el.dropOverlay.hidden = false;
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) el.dropOverlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    el.dropOverlay.hidden = true;
    const file = event.dataTransfer.files[0];
    if (file) runImage(file);
  });

  // Paste an image from the clipboard (text pastes into the box as usual).
  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? [...event.clipboardData.items] : [];
    const item = items.find((it) => it.kind === "file" && it.type.startsWith("image/"));
    if (!item) return;
    const file = item.getAsFile();
    if (!file) return;
    event.preventDefault();
    const named = file.name && file.name !== "image.png" ? file
      : new File([file], `pasted-image.${(file.type.split("/")[1] || "png")}`, { type: file.type });
    runImage(named);
  });

  // "/" focuses the search box from anywhere.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    const t = event.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement || el.details.open) return;
    event.preventDefault();
    el.q.focus();
  });

  // Filters start open on wide screens and folded on phones.
  el.filtersPanel.open = wide.matches;
  setPlaceholder();
  wide.addEventListener("change", (mq) => {
    el.filtersPanel.open = mq.matches;
    setPlaceholder();
  });

  // ---------- start ----------

  updateFilterSummary();
  loadFacets();
  const params = new URLSearchParams(window.location.search);
  const initial = params.get("q");
  const like = params.get("like");
  if (initial) {
    el.q.value = initial;
    runText(initial);
  } else if (like) {
    runSimilar({ product_id: like, title: like, thumbnail_url: null });
  } else if (wide.matches) {
    el.q.focus();
  }
})();
