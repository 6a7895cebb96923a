// The product details dialog: a native <dialog> (Escape and focus trapping come with it).

import { getProduct } from "./api.js";
import { availabilityLabel, el, formatPrice, h, renderCode } from "./dom.js";
import { describeError } from "./errors.js";
import { state } from "./state.js";

// Open the dialog for one product; focus returns to `opener` when it closes.
// onSimilar(product) runs the dialog's "More like this".
export async function openDetails(productId, opener, { onSimilar }) {
  state.detailsOpener = opener || document.activeElement;
  el.details.dataset.productId = productId;
  el.detailsBody.replaceChildren(h("p", { class: "muted details-loading" }, "Loading product…"));
  if (!el.details.open) el.details.showModal();
  try {
    const p = await getProduct(productId);
    if (el.details.dataset.productId !== productId) return; // closed, or another product opened since
    renderDetails(p, onSimilar);
  } catch (err) {
    const d = describeError(err, "details");
    el.detailsBody.replaceChildren(
      h("h2", { id: "details-title", class: "details-title" }, d.title),
      h("p", { class: "message-text" }, renderCode(d.text)));
  }
}

function labelise(key) {
  const s = key.replace(/[_-]+/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

// The main image and, for several images, a row of thumbnails that switch it.
function renderMedia(p, images) {
  const main = h("img", { class: "details-image", alt: p.title, src: images.length ? images[0].url : null });
  main.addEventListener("error", () => main.classList.add("broken"));
  if (images.length < 2) return h("div", { class: "details-media" }, main);
  const gallery = h("div", { class: "gallery", role: "group", "aria-label": "Product images" },
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
    }));
  return h("div", { class: "details-media" }, main, gallery);
}

function attributeRows(p) {
  return [
    ["Brand", p.brand],
    ["Category", p.category],
    ["Availability", availabilityLabel(p.availability || "in_stock")],
    ...Object.entries(p.attributes || {}).map(([key, value]) => [labelise(key), value]),
    ["Product ID", p.product_id],
  ].filter(([, value]) => value !== null && value !== undefined && value !== "");
}

function renderDetails(p, onSimilar) {
  const images = (p.images || []).filter((img) => img.status === "ok");
  const failed = (p.images || []).filter((img) => img.status !== "ok");
  const more = h("button", { type: "button", class: "button primary" }, "More like this");
  more.addEventListener("click", () => {
    el.details.close();
    const first = images[0];
    onSimilar({ product_id: p.product_id, title: p.title, thumbnail_url: first ? first.thumbnail_url : null });
  });

  el.detailsBody.replaceChildren(
    renderMedia(p, images),
    h("div", { class: "details-info" },
      h("p", { class: "eyebrow" }, [p.brand, p.category].filter(Boolean).join(" · ")),
      h("h2", { id: "details-title", class: "details-title" }, p.title),
      h("p", { class: "details-price" }, formatPrice(p.price, p.currency)),
      p.description ? h("p", { class: "details-description" },
        p.description_generated ? h("span", { class: "generated-label", title: "Written from the photo at index time" },
          "generated") : null, p.description) : null,
      h("dl", { class: "attributes" }, attributeRows(p).map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      failed.length ? h("p", { class: "muted small" },
        `${failed.length} image${failed.length > 1 ? "s" : ""} could not be indexed.`) : null,
      h("div", { class: "details-actions" }, more)),
  );
}

// Escape closes (native), so do the close button and a click on the backdrop.
export function wireDetails() {
  el.detailsClose.addEventListener("click", () => el.details.close());
  el.details.addEventListener("click", (event) => {
    if (event.target === el.details) el.details.close();
  });
  el.details.addEventListener("close", () => {
    delete el.details.dataset.productId;
    if (state.detailsOpener && document.contains(state.detailsOpener)) state.detailsOpener.focus();
    state.detailsOpener = null;
  });
}
