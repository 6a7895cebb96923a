"""The search page in a real browser: Debian's Chromium driven by Playwright against `catalens serve`.

Each scenario saves a screenshot to test-artifacts/browser/<name>.png for a human to look at.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import CATALENS, ROOT, SampleIndex, Server, free_port, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (`make browser` installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "test-artifacts" / "browser"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000


# ---------- fixtures ----------

@pytest.fixture(scope="module")
def server(sample_index: SampleIndex, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("browser") / "serve.log"
    srv = start_server(sample_index.index_dir, log=log)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


def open_page(browser, url: str, *, width: int = 1280, height: int = 900):
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []  # uncaught exceptions in the page and requests leaving the server fail the test
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:"))
            else page.errors.append(f"request to another host: {r.url}"))
    page.goto("/")
    return page


@pytest.fixture
def page(browser, server: Server) -> Iterator:
    page = open_page(browser, server.url)
    page.wait_for_selector("#facet-category input[type=checkbox]", state="attached")
    yield page
    errors = list(page.errors)
    page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# ---------- helpers ----------

def seq(page) -> int:
    return int(page.get_attribute("#results", "data-seq") or 0)


def wait_search(page, after: int) -> str:
    """Wait for the search started after `after` to be rendered; returns the results' state."""
    page.wait_for_function("n => Number(document.querySelector('#results').dataset.seq) > n", arg=after)
    return page.get_attribute("#results", "data-state") or ""


def cards(page) -> list[dict[str, str]]:
    return page.eval_on_selector_all("#results .card", "els => els.map(e => ({...e.dataset}))")


def wait_images(page, n: int) -> None:
    """The first n card thumbnails are loaded and decoded (naturalWidth > 0)."""
    page.wait_for_function(
        """n => {
            const imgs = [...document.querySelectorAll('#results .card img')].slice(0, n);
            return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""", arg=n)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def text_search(page, query: str) -> list[dict[str, str]]:
    before = seq(page)
    page.fill("#q", query)
    page.press("#q", "Enter")
    assert wait_search(page, before) == "done"
    return cards(page)


def first_image(sample: SampleIndex, row: dict[str, str]) -> Path:
    return sample.sample_dir / row["image"].split("|")[0]


# ---------- scenarios ----------

def test_search_as_you_type_shows_matching_cards_with_images(page, server: Server) -> None:
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if r.url.endswith("/v1/search/text") else None)
    before = seq(page)
    page.locator("#q").press_sequentially("coffee mug", delay=40)  # no Enter: search-as-you-type
    assert wait_search(page, before) == "done"
    found = cards(page)
    assert len(found) == 24
    assert len(searches) <= 3, f"typing was not debounced: {len(searches)} searches for 10 keystrokes"
    wait_images(page, 8)
    shot(page, "text-search")

    top = [c["category"] for c in found[:3]]
    assert top.count("mug") >= 2, f"top cards for 'coffee mug' are {top}"
    # The cards show what the API answered, in its order, with the time taken and the index version.
    api = httpx.post(f"{server.url}/v1/search/text", json={"query": "coffee mug", "k": 24}).json()
    assert [c["productId"] for c in found] == [r["product_id"] for r in api["results"]]
    status = page.inner_text("#status")
    assert re.search(r"24 results", status) and re.search(r"\d ms", status), status
    version = httpx.get(f"{server.url}/readyz").json()["index_version"]
    assert version in status
    assert page.inner_text("#index-version") == version
    first = page.locator("#results .card").first
    assert api["results"][0]["title"] in first.inner_text()


def test_details_dialog_by_keyboard(page, sample_index: SampleIndex) -> None:
    found = text_search(page, "striped t-shirt")
    product_id = found[0]["productId"]
    row = next(r for r in sample_index.rows() if r["product_id"] == product_id)
    opener = page.locator("#results .card-open").first
    opener.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#details")
    page.wait_for_selector("#details #details-title")
    page.wait_for_function("() => [...document.querySelectorAll('#details img')].every(i => i.complete && i.naturalWidth > 0)")
    assert dialog.locator("#details-title").inner_text() == row["title"]
    body = dialog.inner_text()
    for column in ("brand", "category", "main_colour", "pattern", "material"):
        if row[column]:
            assert row[column].lower() in body.lower(), f"{column} {row[column]!r} missing from the details"
    assert product_id in body
    n_images = len(row["image"].split("|"))
    if n_images > 1:
        assert dialog.locator(".gallery .thumb").count() == n_images
    shot(page, "details")
    page.keyboard.press("Escape")
    page.wait_for_selector("#details", state="hidden")
    assert page.evaluate("document.activeElement.classList.contains('card-open')"), "focus did not return to the card"


def test_image_upload_finds_its_product_first(page, sample_index: SampleIndex) -> None:
    row = sample_index.rows()[7]
    before = seq(page)
    page.set_input_files("#image-input", str(first_image(sample_index, row)))
    assert wait_search(page, before) == "done"
    assert cards(page)[0]["productId"] == row["product_id"]
    page.wait_for_function("() => { const i = document.querySelector('#query-chip-img');"
                           " return i.complete && i.naturalWidth > 0; }")  # the uploaded image's preview
    assert page.is_visible("#query-chip")
    wait_images(page, 4)
    shot(page, "image-search")


def test_drop_and_paste_an_image(page, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()
    for how, row in (("drop", rows[11]), ("paste", rows[12])):
        data = base64.b64encode(first_image(sample_index, row).read_bytes()).decode()
        before = seq(page)
        overlay = page.evaluate("""([how, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "photo.jpg", {type: "image/jpeg"}));
            const init = {dataTransfer: dt, bubbles: true, cancelable: true};
            if (how === "paste") {
                document.body.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true}));
                return null;
            }
            document.body.dispatchEvent(new DragEvent("dragenter", init));
            const shown = !document.querySelector("#drop-overlay").hidden;
            document.body.dispatchEvent(new DragEvent("drop", init));
            return shown;
        }""", [how, data])
        assert wait_search(page, before) == "done", how
        assert cards(page)[0]["productId"] == row["product_id"], how
        assert page.is_visible("#query-chip"), how
        if how == "drop":
            assert overlay is True and page.is_hidden("#drop-overlay")


def test_filters_are_honoured(page, sample_index: SampleIndex) -> None:
    text_search(page, "red")
    category = "mug"
    before = seq(page)
    page.locator("#facet-category label", has_text=re.compile(f"^{category}", re.I)).locator("input").check()
    assert wait_search(page, before) == "done"
    found = cards(page)
    assert found and all(c["category"] == category for c in found), [c["category"] for c in found]
    by_id = {r["product_id"]: r for r in sample_index.rows()}
    assert all(by_id[c["productId"]]["category"] == category for c in found)
    assert page.inner_text("#filter-count") == "1"
    wait_images(page, min(4, len(found)))
    shot(page, "filter-category")

    # A price range narrows further; one nobody matches says so instead of showing a blank page.
    before = seq(page)
    page.fill("#price-max", "12")
    page.press("#price-max", "Enter")
    assert wait_search(page, before) in ("done", "empty")
    assert all(c["category"] == category and float(c["price"]) <= 12 for c in cards(page))
    before = seq(page)
    page.fill("#price-max", "0.01")
    page.press("#price-max", "Enter")
    assert wait_search(page, before) == "empty"
    assert "No products match" in page.inner_text("#message")
    shot(page, "filter-empty")


def test_in_stock_only_hides_what_cannot_be_bought(page, sample_index: SampleIndex) -> None:
    by_id = {r["product_id"]: r for r in sample_index.rows()}
    out_of_stock = [r for r in sample_index.rows() if r["availability"] == "out_of_stock"]
    assert out_of_stock, "the sample world marks some products out of stock"
    text_search(page, out_of_stock[0]["title"])
    shown = cards(page)
    assert any(c["availability"] == "out_of_stock" for c in shown)
    badge = page.locator(f'.card[data-product-id="{out_of_stock[0]["product_id"]}"] .card-availability')
    if badge.count():
        assert badge.inner_text() == "Out of stock"
    before = seq(page)
    page.check("#in-stock")
    assert wait_search(page, before) == "done"
    found = cards(page)
    assert found and all(c["availability"] == "in_stock" for c in found)
    assert all(by_id[c["productId"]]["availability"] == "in_stock" for c in found)
    assert page.inner_text("#filter-count") == "1"
    shot(page, "filter-in-stock")


def test_rerank_toggle_reranks_and_says_so(page, sample_index: SampleIndex) -> None:
    row = next(r for r in sample_index.rows() if r["pattern"] == "striped")
    query = f"{row['main_colour']} {row['category']} with {row['secondary_colour']} stripes"
    plain = text_search(page, query)
    assert page.is_visible("#rerank-toggle") and not page.is_visible("#reranked")
    assert all("rerankScore" not in c for c in plain)
    before = seq(page)
    page.check("#rerank")
    assert wait_search(page, before) == "done"
    reranked = cards(page)
    assert page.is_visible("#reranked")
    assert reranked and all(0 <= float(c["rerankScore"]) <= 1 for c in reranked)
    # Ordered by what differs from the query's named values (said on the card), then by score.
    assert "differs" not in reranked[0]
    for differs in {c.get("differs") for c in reranked}:
        scores = [float(c["score"]) for c in reranked if c.get("differs") == differs]
        assert scores == sorted(scores, reverse=True)
    wait_images(page, min(4, len(reranked)))
    shot(page, "rerank")


def test_more_like_this(page) -> None:
    found = text_search(page, "blue vase")
    source = found[0]["productId"]
    title = page.locator("#results .card-open").first.inner_text()
    before = seq(page)
    page.locator("#results .more-like-this").first.click()
    assert wait_search(page, before) == "done"
    similar = cards(page)
    assert similar and source not in {c["productId"] for c in similar}
    assert title in page.inner_text("#context")
    wait_images(page, 4)
    shot(page, "more-like-this")


def test_bad_upload_shows_a_readable_error(page, tmp_path: Path) -> None:
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is a text file, not a photo\n" * 20)
    before = seq(page)
    page.set_input_files("#image-input", str(fake))
    assert wait_search(page, before) == "error"
    message = page.locator("#message")
    assert message.is_visible() and message.get_attribute("role") == "alert"
    text = message.inner_text()
    assert "not an image" in text and "JPEG" in text and "unsupported_image" in text, text
    assert cards(page) == []
    shot(page, "bad-upload")


def test_phone_width(browser, server: Server) -> None:
    page = open_page(browser, server.url, width=375, height=812)
    try:
        page.fill("#q", "green shoe")
        before = seq(page)
        page.press("#q", "Enter")
        assert wait_search(page, before) == "done"
        wait_images(page, 4)
        boxes = [page.locator("#results .card").nth(i).bounding_box() for i in range(3)]
        assert boxes[0]["y"] == boxes[1]["y"] and boxes[2]["y"] > boxes[0]["y"], "grid should have 2 columns"
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, "the page scrolls sideways"
        assert page.is_visible("#q") and page.is_visible(".search-submit")
        shot(page, "phone")
        assert not page.errors
    finally:
        page.context.close()


def test_no_index_shows_a_readable_message(browser, tmp_path: Path) -> None:
    """A server without a published index answers 503; the page explains what to do."""
    port = free_port()
    proc = subprocess.Popen([CATALENS, "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--index-dir", str(tmp_path / "empty")],
                            env={**os.environ, "CATALENS_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "catalens serve exited"
            assert time.monotonic() < deadline, "catalens serve did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        page = open_page(browser, url)
        try:
            page.fill("#q", "red mug")
            page.press("#q", "Enter")
            page.wait_for_selector("#results[data-state=error]", state="attached")
            text = page.inner_text("#message")
            assert "index is not ready" in text and "catalens index build" in text, text
            shot(page, "no-index")
            assert not page.errors
        finally:
            page.context.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp_path / "empty", ignore_errors=True)



def test_page_takes_its_limits_from_the_server(page, server: Server, sample_index: SampleIndex) -> None:
    """The file input's accept, the query's maxlength and the k choices come from GET /v1/config,
    and change with it: nothing is copied into the page by hand. (tests/test_config_route.py
    checks that /v1/config follows the server's settings.)"""
    config = httpx.get(f"{server.url}/v1/config").json()
    page.wait_for_function("() => document.querySelector('#image-input').accept !== ''")
    assert page.get_attribute("#image-input", "accept") == ",".join(config["image_formats"])
    assert page.get_attribute("#q", "maxlength") == str(config["max_query_chars"])
    k_choices = page.eval_on_selector_all("#k option", "os => os.map(o => Number(o.value))")
    assert max(k_choices) == config["max_k"] and page.input_value("#k") == "24"

    # A server with other rules (answered here by rewriting /v1/config, cheaper than a second
    # server): the page follows, and refuses an image over the upload limit before sending it.
    image = first_image(sample_index, sample_index.rows()[3])
    other = {**config, "image_formats": ["image/png", "image/jpeg"], "max_upload_bytes": image.stat().st_size // 2,
             "max_query_chars": 50, "max_k": 30}
    page.route("**/v1/config", lambda route: route.fulfill(json=other))
    page.reload()
    page.wait_for_function("() => document.querySelector('#image-input').accept === 'image/png,image/jpeg'")
    assert page.get_attribute("#q", "maxlength") == "50"
    assert page.eval_on_selector_all("#k option", "os => os.map(o => Number(o.value))") == [12, 24, 30]
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if r.url.endswith("/v1/search/image") else None)
    page.set_input_files("#image-input", str(image))
    page.wait_for_selector("#message", state="visible")
    text = page.inner_text("#message")
    assert "too large" in text and "payload_too_large" in text, text
    assert uploads == [], "the page uploaded an image over the server's limit"


def test_no_good_match_is_said_above_the_closest_products(page, sample_index: SampleIndex) -> None:
    found = text_search(page, "wireless headphones")
    assert found  # the closest products are still shown ...
    assert page.is_visible("#no-match")  # ... under a notice that none is a match
    assert "No good match" in page.inner_text("#no-match")
    assert all(0 <= float(c["matchProbability"]) < 0.5 for c in found)
    shot(page, "no-good-match")
    # A combination the catalog lacks: the closest products come first, each card saying what differs.
    rows = sample_index.rows()
    have = {(r["category"], r["main_colour"], r["pattern"]) for r in rows}
    category, colour = next((r["category"], r["main_colour"]) for r in rows if (r["category"], r["main_colour"],
                                                                               "striped") not in have)
    found = text_search(page, f"{colour} striped {category}")
    assert page.is_visible("#no-match")
    assert found[0]["category"] == category and found[0]["differs"], found[0]
    assert page.locator(".card-differs").first.inner_text().startswith("Differs: ")
    shot(page, "no-good-match-closest")
    row = next(r for r in sample_index.rows() if r["pattern"] != "solid")
    text_search(page, f"{row['main_colour']} {row['pattern']} {row['category']}")  # a product the catalog has
    assert not page.is_visible("#no-match")


def test_match_words_only_finds_a_sku(page, sample_index: SampleIndex) -> None:
    row = sample_index.rows()[4]
    page.select_option("#mode", "keyword")  # the filters panel is open on a wide page; no query yet
    assert text_search(page, row["sku"])[0]["productId"] == row["product_id"]
    before = seq(page)
    page.select_option("#mode", "hybrid")  # the query runs again, in the new mode
    assert wait_search(page, before) == "done"
    assert cards(page)[0]["productId"] == row["product_id"]


def test_refine_a_photo_with_words_and_describe_it(page, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()
    row = rows[0]
    colour = next(c for c in ("blue", "red", "green", "yellow") if c != row["main_colour"])
    before = seq(page)
    page.set_input_files("#image-input", str(first_image(sample_index, row)))
    assert wait_search(page, before) == "done"
    assert page.is_visible("#describe-button")
    before = seq(page)
    with page.expect_request("**/v1/search/mix"):
        page.fill("#q", f"+{colour}")
        page.press("#q", "Enter")
    assert wait_search(page, before) == "done"
    assert page.is_visible("#query-chip")  # the photo stays: the words refine it
    by_id = {r["product_id"]: r for r in rows}
    colours = [by_id[c["productId"]]["main_colour"] for c in cards(page)[:5]]
    assert colours.count(colour) >= 3, colours
    shot(page, "refine-photo")

    before = seq(page)
    page.click("#describe-button")
    page.wait_for_selector("#description li[data-facet=category]")
    assert row["category"] in page.inner_text("#description li[data-facet=category]")
    assert page.is_checked(f"#facet-category input[value='{row['category']}']")  # the filter follows the photo
    wait_search(page, before)
    assert {by_id[c["productId"]]["category"] for c in cards(page)} == {row["category"]}
    shot(page, "describe-photo")
