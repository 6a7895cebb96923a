// Catalens search page: native ES modules, no build step, talks only to this server's /v1 API.
// This module wires the page's events to the other modules and starts it.

import { getConfig } from "./api.js";
import { wireDetails } from "./details.js";
import { el, h, isWide } from "./dom.js";
import { updateFilterSummary, wireFilters } from "./filters.js";
import { showError } from "./results.js";
import {
  clearQuery, describeCurrentPhoto, refreshFacets, rerun, runImage, runSimilar, runText, search, setPlaceholder,
} from "./search.js";
import { state } from "./state.js";

const DEBOUNCE_MS = 250; // search-as-you-type waits this long after the last keystroke
const PRICE_DEBOUNCE_MS = 500;
const K_CHOICES = [12, 24, 48]; // page sizes offered below the server's max_k, which is offered too
const DEFAULT_K = 24;

// ---------- server rules from GET /v1/config ----------

// The "Show N" choices: K_CHOICES under the server's max_k, then max_k itself.
function renderKChoices(maxK) {
  const choices = [...K_CHOICES.filter((n) => n < maxK), maxK];
  const selected = choices.includes(DEFAULT_K) ? DEFAULT_K : choices.at(-1);
  el.k.replaceChildren(...choices.map((n) =>
    h("option", { value: String(n), selected: n === selected }, String(n))));
}

function applyConfig(config) {
  state.config = config;
  el.imageInput.accept = config.image_formats.join(",");
  el.q.maxLength = config.max_query_chars;
  renderKChoices(config.max_k);
}

async function loadConfig() {
  try {
    applyConfig(await getConfig());
  } catch (err) {
    showError(err, "config"); // the server validates anyway; searches still get its errors
  }
}

// ---------- the search box ----------

function wireSearchBox() {
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.q.value.trim();
    if (text) runText(text);
    else if (state.query && state.query.kind !== "text") search();
    else el.q.focus();
  });
  // Search as you type, once the typing pauses.
  el.q.addEventListener("input", () => {
    clearTimeout(state.debounceTimer);
    const text = el.q.value.trim();
    if (!text) return;
    state.debounceTimer = setTimeout(() => runText(text), DEBOUNCE_MS);
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
    el.imageInput.value = ""; // picking the same file again still fires "change"
  });
  el.chipClear.addEventListener("click", clearQuery);
  el.describeButton.addEventListener("click", describeCurrentPhoto);
  el.chipImg.addEventListener("error", () => el.chipImg.classList.add("broken"));
  el.k.addEventListener("change", () => {
    if (state.query) search();
  });
}

// ---------- images from anywhere: drop and paste ----------

const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");

function wireDrop() {
  // dragenter/dragleave fire for every child crossed; count them to know when the drag left the page.
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    state.dragDepth += 1;
    el.dropOverlay.hidden = false;
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", () => {
    state.dragDepth = Math.max(0, state.dragDepth - 1);
    if (state.dragDepth === 0) el.dropOverlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    state.dragDepth = 0;
    el.dropOverlay.hidden = true;
    const file = event.dataTransfer.files[0];
    if (file) runImage(file);
  });
}

// Paste an image from the clipboard (text pastes into the box as usual).
function wirePaste() {
  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? [...event.clipboardData.items] : [];
    const item = items.find((it) => it.kind === "file" && it.type.startsWith("image/"));
    if (!item) return;
    const file = item.getAsFile();
    if (!file) return;
    event.preventDefault();
    // Browsers name every pasted screenshot "image.png"; say where it came from instead.
    const named = file.name && file.name !== "image.png" ? file
      : new File([file], `pasted-image.${(file.type.split("/")[1] || "png")}`, { type: file.type });
    runImage(named);
  });
}

// "/" focuses the search box from anywhere but a form field or the open dialog.
function wireSlashKey() {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    const t = event.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement
      || el.details.open) return;
    event.preventDefault();
    el.q.focus();
  });
}

// Filters start open on wide screens and folded on phones, and follow the layout when it
// crosses the breakpoint (which only style.css knows; see isWide).
function wireLayout() {
  state.wide = isWide();
  el.filtersPanel.open = state.wide;
  setPlaceholder();
  window.addEventListener("resize", () => {
    if (isWide() === state.wide) return;
    state.wide = !state.wide;
    el.filtersPanel.open = state.wide;
    setPlaceholder();
  });
}

// ---------- start ----------

// A bookmarked ?q= or ?like= runs at once; otherwise the search box gets the focus on wide screens.
function runFromUrl() {
  const params = new URLSearchParams(window.location.search);
  const initial = params.get("q");
  const like = params.get("like");
  if (initial) {
    el.q.value = initial;
    runText(initial);
  } else if (like) {
    runSimilar({ product_id: like, title: like, thumbnail_url: null });
  } else if (isWide()) {
    el.q.focus();
  }
}

async function start() {
  wireSearchBox();
  wireFilters({ onChange: rerun, debounceMs: PRICE_DEBOUNCE_MS });
  wireDetails();
  wireDrop();
  wirePaste();
  wireSlashKey();
  wireLayout();
  updateFilterSummary();
  await loadConfig(); // first: the k choices and input limits come from it
  refreshFacets();
  runFromUrl();
}

start();
