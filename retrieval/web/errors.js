// Readable explanations of API errors, keyed on the API's error `code` (catalens/errors.py and
// retrieval/app.py), never on the HTTP status. The server's message is shown as the detail,
// followed by the entry's hint; a code not listed here shows the server's message as it is.

import { formatNames } from "./dom.js";
import { state } from "./state.js";

// code -> {title, text}. `text` is a hint added after the server's message; in it
// {formats} becomes the accepted image formats from /v1/config.
const ERROR_TEXT = {
  network_error: { title: "Cannot reach the Catalens server",
    text: "Check that `catalens serve` is running, then try again." },
  invalid_input: { title: "That search cannot be run", text: "" },
  bad_request: { title: "That search cannot be run", text: "" },
  not_found: { title: "Not found", text: "" },
  unsupported_image: { title: "That file is not an image we can read", text: "Use a {formats} image." },
  payload_too_large: { title: "That image is too large", text: "Try a smaller image." },
  image_fetch_failed: { title: "The image could not be fetched", text: "" },
  image_source_refused: { title: "That image source is not allowed", text: "" },
  unauthorized: { title: "This server needs an API key", text: "" },
  forbidden: { title: "Not allowed", text: "" },
  index_not_ready: { title: "The search index is not ready",
    text: "Search works as soon as an index is published." },
  index_artifact_error: { title: "The search index cannot be read",
    text: "Publish a good version with `catalens index build`; search works again once it is loaded." },
  model_load_failed: { title: "The search model did not load", text: "See the server log." },
  catalog_error: { title: "The catalog cannot be read", text: "" },
  database_error: { title: "The product database is unavailable", text: "Try again in a moment." },
  build_locked: { title: "An index build is already running", text: "Try again when it has finished." },
  method_not_allowed: { title: "Something went wrong", text: "The page sent a request the server does not accept." },
  internal_error: { title: "Something went wrong", text: "The server hit an unexpected error; see its log." },
};

// The same codes read differently when the user's own upload caused them.
const UPLOAD_TEXT = {
  network_error: { title: "The upload did not go through",
    text: "The server closed the connection. The image may be too large; try a smaller one." },
  invalid_input: { title: "That upload cannot be searched", text: "" },
  bad_request: { title: "That upload cannot be searched", text: "" },
};

const FALLBACK = { title: "Something went wrong", text: "" };

// "not a recognised image file" -> "Not a recognised image file."
function sentence(message) {
  if (!message) return "";
  const s = `${message.charAt(0).toUpperCase()}${message.slice(1)}`;
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

function fillHint(text) {
  if (!text.includes("{formats}")) return text;
  const formats = state.config ? formatNames(state.config.image_formats) : "";
  return formats ? text.replace("{formats}", formats) : "Use another image.";
}

// err: an ApiError; context: "search" | "upload" | "facets" | "details" | "config".
// Returns {title, text}; the text may hold `backticks` (rendered as code).
export function describeError(err, context = "search") {
  const known = (context === "upload" && UPLOAD_TEXT[err.code]) || ERROR_TEXT[err.code];
  const entry = known || FALLBACK;
  const detail = sentence(err.message);
  let text = [detail, fillHint(entry.text)].filter(Boolean).join(" ");
  if (!known && err.status) text = `${text || "The server answered with an error."} (HTTP ${err.status})`;
  return { title: entry.title, text };
}
