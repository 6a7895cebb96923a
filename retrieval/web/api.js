// The /v1 API: fetch wrappers. Every error answer is {"error": {"code", "message"}}; it
// becomes an ApiError carrying that code, which is what the page keys its messages on.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0: no HTTP answer at all
    this.code = code;
  }
}

const JSON_ACCEPT = { Accept: "application/json" };

// JSON in, JSON out. An AbortError passes through untouched (a newer search replaced this one).
async function call(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...JSON_ACCEPT, ...(init.headers || {}) } });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network_error", "");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // a proxy's HTML error page, or an empty body
  }
  if (!response.ok) {
    const e = (body && body.error) || {};
    throw new ApiError(response.status, e.code || `http_${response.status}`, e.message || response.statusText);
  }
  return body;
}

export const getConfig = () => call("/v1/config");

export const getFacets = () => call("/v1/facets");

export const getProduct = (productId) => call(`/v1/products/${encodeURIComponent(productId)}`);

// {query, k, filters, rerank, mode} -> SearchOut
export function searchText({ text, k, filters, rerank, mode }, signal) {
  return call("/v1/search/text", {
    method: "POST",
    signal,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ query: text, k, filters, rerank, mode }),
  });
}

// The file as base64 (no data: prefix), for a mixed query's image part.
function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new ApiError(0, "unreadable_file", "the image could not be read"));
    reader.readAsDataURL(file);
  });
}

// A photo refined with words: "+blue -dots" -> parts [image, {text: "blue"}, {text: "dots", weight: -0.5}].
export async function searchMix({ file, words, k, filters, rerank }, signal) {
  const parts = [{ image: await base64Of(file) }];
  for (const word of words.split(/\s+/).filter(Boolean)) {
    const negative = word.startsWith("-");
    const text = word.replace(/^[+-]/, "");
    if (text) parts.push(negative ? { text, weight: -0.5 } : { text });
  }
  return call("/v1/search/mix", {
    method: "POST",
    signal,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ parts, k, filters, rerank: Boolean(rerank) }),
  });
}

export function searchImage({ file, k, filters, rerank }, signal) {
  const form = new FormData();
  form.append("file", file, file.name || "pasted-image");
  form.append("k", String(k));
  form.append("filters", JSON.stringify(filters));
  form.append("rerank", String(rerank));
  return call("/v1/search/image", { method: "POST", signal, body: form });
}

export function searchSimilar({ productId, k, filters }, signal) {
  const params = new URLSearchParams({ k: String(k) });
  for (const c of filters.category || []) params.append("category", c);
  for (const b of filters.brand || []) params.append("brand", b);
  if (filters.price_min !== undefined) params.set("price_min", String(filters.price_min));
  if (filters.price_max !== undefined) params.set("price_max", String(filters.price_max));
  for (const a of filters.availability || []) params.append("availability", a);
  return call(`/v1/products/${encodeURIComponent(productId)}/similar?${params}`, { signal });
}

// A photo -> {<facet>: {value, p}, ..., caption, title, similar}
export function describePhoto({ file }, signal) {
  const form = new FormData();
  form.append("file", file, file.name || "pasted-image");
  return call("/v1/describe", { method: "POST", signal, body: form });
}
