// The page's one mutable state. Every module reads and writes these fields here, so all that
// can change between two events is listed in one place (no module keeps variables of its own).

export const state = {
  // What is being searched: null | {kind: "text", text} | {kind: "image", file, url}
  //                         | {kind: "mix", file, url, words} | {kind: "similar", id, title, thumb}
  query: null,
  // setTimeout id of the pending search-as-you-type search.
  debounceTimer: 0,
  // setTimeout id of the pending search after a price was typed.
  priceTimer: 0,
  // AbortController of the running search (a newer search aborts it).
  inflight: null,
  // Id of the newest search started; an answer to an older one is dropped.
  requestId: 0,
  // Searches finished (rendered or failed); mirrored to #results[data-seq] for tests.
  seq: 0,
  // The element that opened the details dialog; focus goes back to it on close.
  detailsOpener: null,
  // The index version the filter values came from (a newer one refreshes them).
  facetsVersion: null,
  facetsLoading: false,
  // Nested dragenter/dragleave count while a file is dragged over the page.
  dragDepth: 0,
  // The layout last seen: true = wide (style.css's breakpoint decides; see dom.js isWide).
  wide: true,
  // GET /v1/config: {image_formats, max_upload_bytes, max_query_chars, max_k, max_rerank_top_n,
  // reranker}; null until it has loaded.
  config: null,
  // The object URL of the photo the shown description is of.
  describedUrl: null,
};
