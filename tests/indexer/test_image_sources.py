"""Image sources against hostile references (RELIABILITY.md rows 20-22, 24-26): internal URLs
(SSRF), paths outside the catalog, extreme aspect ratios, polyglots, slow servers, poisoned items."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from catalens.config import Settings
from indexer.reader import ImageJob, ImageReader, LoadedImage

KEY = "image-sources-test-key"
PNG = "image/png"


# --- helpers: real servers, real files ------------------------------------------------------


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A distinct small RGB picture per seed (different bytes, different vector)."""
    noise = Image.effect_noise(size, 40 + seed).convert("RGB")
    tint = Image.new("RGB", size, ((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256))
    return Image.blend(noise, tint, 0.6)


def encoded(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class ImageHost:
    """A real HTTP server in a thread: fixed answers per path, and a count of accepted connections."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]], host: str = "127.0.0.1") -> None:
        self.routes = routes
        self.connections = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                with lock:
                    owner.connections += 1
                super().setup()

            def do_GET(self) -> None:  # noqa: N802
                status, headers, body = owner.routes.get(self.path, (404, {}, b"no such image"))
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = host
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SlowHost:
    """A raw TCP server that answers at one byte per second ('body' or 'headers'), or never ('silent')."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow.png"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 20\r\n\r\n"
        drip = {"body": b"\x89PNG" + b"x" * 16, "headers": b"X-Slow: " + b"y" * 20, "silent": b""}[self.mode]
        try:
            conn.recv(65536)
            if self.mode == "body":
                conn.sendall(head)
            elif self.mode == "headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for byte in drip:
                if self.stop.wait(1.0):
                    break
                conn.sendall(bytes([byte]))
            self.stop.wait(60)
        except OSError:
            pass  # the client gave up: that is the point
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def make_reader(settings: Settings, encoder: Any, root: Path | None = None) -> ImageReader:
    return ImageReader(settings, images_root=root, preprocess=encoder.preprocess, image_size=encoder.image_size,
                       is_cached=lambda digest: False)


def read_job(reader: ImageReader, source: str) -> LoadedImage:
    return reader(ImageJob(1, source))


# --- a small world of its own: catalog, images root, index, app ------------------------------


@dataclass
class World:
    root: Path  # the catalog's folder: its images root
    catalog: Path
    settings: Settings
    outside: Path  # a folder beside it, outside every allowed root


def write_catalog(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["product_id", "title", "image"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> World:
    from indexer.runner import BuildOptions, build_index

    root = tmp_path_factory.mktemp("sources-world")
    (root / "images").mkdir()
    rows = []
    for i in range(4):
        picture(i).save(root / "images" / f"p{i}.png")
        rows.append({"product_id": f"P{i}", "title": f"Plain product number {i}", "image": f"images/p{i}.png"})
    catalog = write_catalog(root / "catalog.csv", rows)
    settings = Settings(index_dir=root / "idx", threads=1, rerank_features=False, reranker="none", api_key=KEY,
                        url_allow=["127.0.0.1"], fetch_timeout_s=3)
    build_index(settings, BuildOptions(catalog=catalog, progress=False), encoder=encoder)
    outside = tmp_path_factory.mktemp("outside-the-roots")
    picture(99).save(outside / "secret.png")
    return World(root, catalog, settings, outside)


@pytest.fixture(scope="module")
def app(world: World, encoder: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from catalens.db import create_db_engine, create_session_factory
    from indexer.live import IndexEditor
    from retrieval.app import create_app
    from retrieval.searcher import Searcher

    searcher = Searcher(world.settings, create_session_factory(create_db_engine(world.settings.db_url)), encoder)
    searcher.reload()
    app = create_app(world.settings, searcher=searcher, editor=IndexEditor(world.settings, searcher.encoder, searcher.reranker))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def host() -> Iterator[ImageHost]:
    server = ImageHost({"/a.png": (200, {"Content-Type": PNG}, encoded(picture(50))),
                        "/hop1": (302, {"Location": "/hop2"}, b""),
                        "/hop2": (301, {"Location": "/a.png"}, b"")})
    yield server
    server.close()


def upsert(app: Any, *products: dict[str, Any]) -> Any:
    return app.post("/v1/admin/products", json={"products": list(products)}, headers={"X-API-Key": KEY})


def image_rows(settings: Settings) -> dict[str, tuple[str, str | None]]:
    """product id -> (status, stored error) of its first image, straight from the DB."""
    from sqlalchemy import select

    from catalens.db import create_db_engine
    from catalens.schema import Product, ProductImage

    engine = create_db_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Product.product_id, ProductImage.status, ProductImage.error)
                                .join(ProductImage).where(ProductImage.position == 0)).all()
    finally:
        engine.dispose()
    return {pid: (status, error) for pid, status, error in rows}


# --- row 22: extreme aspect ratios -------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1)])
def test_row22_extreme_aspect_ratio_uploads_are_a_fast_4xx_with_bounded_memory(client: Any,
                                                                               size: tuple[int, int]) -> None:
    data = encoded(Image.new("1", size), optimize=True)
    assert len(data) < 2000  # a few hundred bytes on the wire
    before = maxrss_mb()
    started = time.perf_counter()
    resp = client.post("/v1/search/image", files={"file": ("strip.png", data, PNG)})
    took = time.perf_counter() - started
    grown = maxrss_mb() - before
    assert resp.status_code == 422, resp.text[:300]
    message = resp.json()["error"]["message"]
    assert f"{size[0]}x{size[1]}" in message and "100000:1" in message, message
    assert "20:1" in message and "CATALENS_MAX_ASPECT_RATIO" in message, message
    assert took < 2.0 and grown < 200, (took, grown)


def test_row22_the_indexer_records_an_extreme_aspect_ratio_per_image(tmp_path: Path, encoder: Any) -> None:
    strip = tmp_path / "strip.png"
    strip.write_bytes(encoded(Image.new("1", (100_000, 1)), optimize=True))
    before = maxrss_mb()
    out = read_job(make_reader(Settings(index_dir=tmp_path / "idx"), encoder, tmp_path), str(strip))
    assert out.error_code == "invalid_input" and "aspect ratio 100000:1" in (out.error or ""), out
    assert out.pixels is None and maxrss_mb() - before < 200


# --- row 20: internal URLs (SSRF) ---------------------------------------------------------------


INTERNAL = ["http://127.0.0.1:{port}/a.png", "http://localhost:{port}/a.png", "http://2130706433:{port}/a.png",
            "http://0x7f.0.0.1:{port}/a.png", "http://127.1:{port}/a.png", "http://0.0.0.0:{port}/a.png",
            "http://[::1]:{port}/a.png", "http://[::ffff:127.0.0.1]:{port}/a.png",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://[fd00:ec2::254]/latest/",
            "http://10.11.12.13/a.png", "http://192.168.0.1/a.png", "http://224.0.0.1/a.png", "http://[::]/a.png"]


@pytest.mark.reliability
def test_row20_internal_image_urls_are_refused_before_any_connection(tmp_path: Path, encoder: Any) -> None:
    server = ImageHost({"/a.png": (200, {"Content-Type": PNG}, encoded(picture(1)))})
    try:
        reader = make_reader(Settings(index_dir=tmp_path / "idx", fetch_timeout_s=2), encoder)
        for template in INTERNAL:
            url = template.format(port=server.port)
            out = read_job(reader, url)
            assert out.error_code == "image_source_refused", (url, out.error_code, out.error)
            assert out.error == "image URL refused: it resolves to a loopback, private, link-local or reserved " \
                                "address (allow it with CATALENS_URL_ALLOW)", out.error
        assert server.connections == 0
        # The allow-list opens exactly what it names: the same loopback host is now fetched.
        allowed = make_reader(Settings(index_dir=tmp_path / "idx", url_allow=["127.0.0.1"]), encoder)
        assert read_job(allowed, server.url("/a.png")).error is None
        assert server.connections == 1
        by_name = make_reader(Settings(index_dir=tmp_path / "idx", url_allow=["LocalHost"]), encoder)
        assert read_job(by_name, f"http://localhost:{server.port}/a.png").error is None
        assert read_job(by_name, server.url("/a.png")).error_code == "image_source_refused"
    finally:
        server.close()


def test_row20_redirects_are_followed_by_hand_and_every_hop_is_checked(tmp_path: Path, encoder: Any) -> None:
    inner = ImageHost({"/a.png": (200, {"Content-Type": PNG}, encoded(picture(2)))}, host="127.0.0.2")
    outer = ImageHost({"/a.png": (200, {"Content-Type": PNG}, encoded(picture(3))),
                       "/to-inner": (302, {"Location": inner.url("/a.png")}, b""),
                       "/to-metadata": (307, {"Location": "http://169.254.169.254/latest/"}, b""),
                       "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
                       "/loop": (302, {"Location": "/loop"}, b""),
                       "/hop1": (302, {"Location": "/hop2"}, b""),
                       "/hop2": (308, {"Location": "/a.png"}, b"")})
    try:
        reader = make_reader(Settings(index_dir=tmp_path / "idx", url_allow=["127.0.0.1/32"]), encoder)
        assert read_job(reader, outer.url("/hop1")).error is None  # two relative redirects are fine
        for path in ("/to-inner", "/to-metadata", "/to-file"):
            out = read_job(reader, outer.url(path))
            assert out.error_code == "image_source_refused" and out.error.startswith("image URL refused"), out
            assert "127.0.0.2" not in out.error and "169.254" not in out.error and "passwd" not in out.error
        assert inner.connections == 0
        looping = read_job(reader, outer.url("/loop"))
        assert (looping.error_code, looping.error) == (
            "image_fetch_failed", "image URL could not be fetched (more than 5 redirects)")
        assert outer.connections == 3 + 3 + 6  # hop1/hop2/a.png, the three refused first hops, 1 + 5 loops
    finally:
        inner.close()
        outer.close()


def test_row20_fetch_errors_do_not_reveal_hosts_or_connection_details(tmp_path: Path, encoder: Any) -> None:
    server = ImageHost({})
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]  # nothing listens here once the block ends
    try:
        reader = make_reader(Settings(index_dir=tmp_path / "idx", url_allow=["127.0.0.0/8"]), encoder)
        cases = {server.url("/missing.png"): "image URL could not be fetched (HTTP 404)",
                 f"http://127.0.0.1:{closed_port}/a.png": "image URL could not be fetched (connection failed)"}
        for url, message in cases.items():
            out = read_job(reader, url)
            assert (out.error_code, out.error) == ("image_fetch_failed", message), (url, out)
    finally:
        server.close()


# --- row 25: slow source servers ------------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("mode,timeout", [("body", 2.0), ("headers", 1.0), ("silent", 1.0)])
def test_row25_a_slow_server_is_cut_at_one_deadline_for_the_whole_fetch(tmp_path: Path, encoder: Any, mode: str,
                                                                        timeout: float) -> None:
    slow = SlowHost(mode)
    try:
        # The slow server is on 127.0.0.1: allowing it also proves the allow-list works.
        settings = Settings(index_dir=tmp_path / "idx", fetch_timeout_s=timeout, url_allow=["127.0.0.1"])
        started = time.monotonic()
        out = read_job(make_reader(settings, encoder), slow.url())
        took = time.monotonic() - started
    finally:
        slow.close()
    assert (out.error_code, out.error) == ("image_fetch_failed", "image URL could not be fetched (timed out)"), out
    assert timeout - 0.5 < took < timeout + 1.0, took


# --- row 21: paths outside the catalog, devices, FIFOs -------------------------------------------


CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a runaway read dies here, not the machine
from catalens.errors import CatalensError
from catalens.images import read_image_source
started = time.perf_counter()
try:
    data = read_image_source(sys.argv[1], images_root=None, timeout_s=2, max_bytes=int(sys.argv[2]))
    out = {"read": len(data)}
except CatalensError as exc:
    out = {"code": exc.code, "message": exc.message}
out["seconds"] = time.perf_counter() - started
# VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak across fork + exec.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
out["maxrss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def read_in_child(path: Path | str, max_bytes: int = 20 << 20) -> dict[str, Any]:
    """read_image_source in a real process with a 1 GiB address-space cap and a 20 s limit."""
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(max_bytes)], capture_output=True,
                              text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path} hung")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.reliability
def test_row21_devices_fifos_directories_and_sockets_are_refused_fast_with_flat_memory(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    sock_path = tmp_path / "sock.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        for path in ("/dev/zero", "/dev/urandom", fifo, folder, sock_path):
            out = read_in_child(path)
            assert out.get("code") == "image_source_refused", (path, out)
            assert out["message"] == "image path refused: not a regular file", (path, out)
            assert out["seconds"] < 1.0 and out["maxrss_mb"] < 200, (path, out)
    finally:
        server.close()
    big = tmp_path / "big.png"
    big.write_bytes(encoded(picture(7)) + b"\0" * 5000)
    out = read_in_child(big, max_bytes=4096)
    assert out.get("code") == "payload_too_large" and str(tmp_path) not in out["message"], out
    missing = read_in_child(tmp_path / "missing.png")
    assert (missing.get("code"), missing.get("message")) == ("image_fetch_failed", "image file not found"), missing


@pytest.mark.reliability
def test_row21_admin_upsert_refuses_paths_outside_the_images_root_without_telling_if_they_exist(
        world: World, app: Any) -> None:
    link = world.root / "images" / "link-out.png"
    link.unlink(missing_ok=True)
    link.symlink_to(world.outside / "secret.png")
    before = app.get("/readyz").json()["index_version"]
    messages = {}
    for name, image in {"absolute": str(world.outside / "secret.png"),
                        "absolute-missing": str(world.outside / "no-such-file.png"),
                        "dotdot": f"../{world.outside.name}/secret.png",
                        "dotdot-inside-then-out": f"images/../../{world.outside.name}/secret.png",
                        "symlink-out": "images/link-out.png",
                        "dev-zero": "/dev/zero", "ssh-key": str(Path.home() / ".ssh" / "id_rsa"), "passwd": "/etc/passwd"}.items():
        resp = upsert(app, {"product_id": "OK-1", "title": "fine"},
                      {"product_id": f"X-{name}", "title": "probe", "image": ["images/p0.png", image]})
        assert resp.status_code == 422, (name, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "invalid_input", (name, error)
        assert error["message"].startswith("products[1] field 'image'"), (name, error)
        for leak in (str(world.outside), world.outside.name, "secret", "no-such-file", "passwd", "ssh", "zero"):
            assert leak not in error["message"], (name, leak, error)
        messages[name] = error["message"]
    assert len(set(messages.values())) == 1, messages  # an existing file and a missing one look the same
    assert app.get("/readyz").json()["index_version"] == before  # nothing was published


def test_row21_relative_upsert_paths_resolve_against_the_active_catalog_folder(world: World, app: Any) -> None:
    picture(20).save(world.root / "images" / "rel.png")
    resp = upsert(app, {"product_id": "REL-1", "title": "Relative path product", "image": "images/rel.png"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["images_ok"] == 1 and resp.json()["errors"] == []
    img = app.get("/v1/products/REL-1/image")
    assert img.status_code == 200 and img.content == (world.root / "images" / "rel.png").read_bytes()


@pytest.mark.reliability
def test_row21_the_image_route_rechecks_the_roots_and_serves_nothing_outside(world: World, app: Any) -> None:
    target = world.root / "images" / "swap.png"
    picture(21).save(target)
    assert upsert(app, {"product_id": "SWAP-1", "title": "Swapped later", "image": str(target)}).status_code == 200
    assert app.get("/v1/products/SWAP-1/image").status_code == 200
    target.unlink()
    target.symlink_to(world.outside / "secret.png")  # the indexed path now leads outside the roots
    resp = app.get("/v1/products/SWAP-1/image")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", resp.text
    assert str(world.root) not in resp.text and "swap" not in resp.text and "secret" not in resp.text
    assert app.get("/v1/products/SWAP-1/image", params={"size": "thumb"}).status_code == 200  # made at index time


# --- row 24: polyglots are served as the format they decode as ---------------------------------


def gif_html_polyglot() -> bytes:
    data = encoded(Image.new("P", (8, 8), 3), "GIF",
                   comment=b"<html><body><script>alert(document.domain)</script></body></html>")
    assert data.startswith(b"GIF89a") and b"<script>" in data
    return data


@pytest.mark.reliability
def test_row24_a_gif_html_polyglot_is_served_as_image_gif_with_nosniff(world: World, app: Any) -> None:
    poly = world.root / "images" / "poly.html"
    poly.write_bytes(gif_html_polyglot())
    svg = world.root / "images" / "evil.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="8" height="8"/></svg>')
    resp = upsert(app, {"product_id": "POLY-1", "title": "Polyglot product", "image": str(poly)},
                  {"product_id": "SVG-1", "title": "Vector product", "image": str(svg)})
    assert resp.status_code == 200, resp.text
    served = app.get("/v1/products/POLY-1/image")
    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "image/gif", served.headers
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.content == poly.read_bytes()
    thumb = app.get("/v1/products/POLY-1/image", params={"size": "thumb"})
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.headers["x-content-type-options"] == "nosniff"
    refused = app.get("/v1/products/SVG-1/image")
    assert refused.status_code == 404 and "evil" not in refused.text and str(world.root) not in refused.text
    assert "image/svg" not in refused.headers["content-type"]


@pytest.mark.reliability
def test_row24_url_sources_are_fetched_by_the_guarded_fetcher_never_redirected(world: World, app: Any) -> None:
    server = ImageHost({"/b.png": (200, {"Content-Type": "text/html"}, encoded(picture(22)))})
    try:
        resp = upsert(app, {"product_id": "URL-1", "title": "Remote product", "image": server.url("/b.png")})
        assert resp.status_code == 200 and resp.json()["images_ok"] == 1, resp.text
        full = app.get("/v1/products/URL-1/image", follow_redirects=False)
        assert full.status_code == 200, (full.status_code, full.headers)
        assert full.headers["content-type"] == PNG and full.headers["x-content-type-options"] == "nosniff"
        assert full.content == server.routes["/b.png"][2]
    finally:
        server.close()
    fallback = app.get("/v1/products/URL-1/image", follow_redirects=False)  # the source is gone: the thumbnail
    assert fallback.status_code == 200 and fallback.headers["content-type"] == "image/jpeg", fallback.headers


@pytest.mark.reliability
def test_row20_public_product_json_names_no_internal_url_path_or_connection_error(world: World, app: Any,
                                                                                host: ImageHost) -> None:
    products = {"LEAK-META": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                "LEAK-ULA": "http://[fd00:ec2::254]/latest/",
                "LEAK-404": host.url("/gone.png"),
                "LEAK-PATH": str(world.root / "images" / "nope-not-here.png")}
    resp = upsert(app, *({"product_id": pid, "title": f"Leak probe {pid}", "image": src}
                         for pid, src in products.items()))
    assert resp.status_code == 200 and resp.json()["images_failed"] == 4, resp.text
    expected = {"LEAK-META": "image_source_refused", "LEAK-ULA": "image_source_refused",
                "LEAK-404": "image_fetch_failed", "LEAK-PATH": "image_fetch_failed"}
    for pid, code in expected.items():
        body = app.get(f"/v1/products/{pid}").json()
        image = body["images"][0]
        assert image["status"] == "error" and image["error"].startswith(f"{code}: "), image
        text = json.dumps(body["images"])
        for leak in ("169.254", "fd00", "127.0.0.1", str(host.port), str(world.root), "nope-not-here", "Error"):
            assert leak not in text, (pid, leak, text)
        full = app.get(f"/v1/products/{pid}/image", follow_redirects=False)
        assert full.status_code == 404 and "169.254" not in full.text and "nope" not in full.text, full.text
    # The operator still sees the reason, per item, without the resolved address.
    stored = image_rows(world.settings)
    assert stored["LEAK-META"][1] == "image_source_refused: image URL refused: it resolves to a loopback, " \
                                     "private, link-local or reserved address (allow it with CATALENS_URL_ALLOW)"
    assert stored["LEAK-404"][1] == "image_fetch_failed: image URL could not be fetched (HTTP 404)"


# --- row 26: a poisoned item is not retried by later builds ---------------------------------------


def was_read(path: Path, action: Any) -> bool:
    """Whether `action` read the file: its access time, set before its modification time, moves
    on a read (relatime updates it exactly then)."""
    mtime = path.stat().st_mtime
    os.utime(path, (mtime - 3600, mtime))
    action()
    return path.stat().st_atime > mtime - 3600


@pytest.mark.reliability
def test_row26_a_failed_image_is_recorded_and_not_read_again_by_later_builds(tmp_path: Path, encoder: Any) -> None:
    from indexer.runner import BuildOptions, build_index

    server = ImageHost({})  # every path answers 404
    try:
        (tmp_path / "images").mkdir()
        rows = []
        for i in range(4):
            picture(30 + i).save(tmp_path / "images" / f"g{i}.png")
            rows.append({"product_id": f"G{i}", "title": f"Good product {i}", "image": f"images/g{i}.png"})
        corrupt = tmp_path / "images" / "corrupt.jpg"
        corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 20)
        rows.append({"product_id": "BAD", "title": "Broken image product", "image": server.url("/gone.png")})
        rows.append({"product_id": "CORRUPT", "title": "Corrupt image product", "image": "images/corrupt.jpg"})
        catalog = write_catalog(tmp_path / "catalog.csv", rows)
        settings = Settings(index_dir=tmp_path / "idx", threads=1, rerank_features=False, url_allow=["127.0.0.1"])
        first = build_index(settings, BuildOptions(catalog=catalog, progress=False), encoder=encoder)
        assert first.images_failed == 2 and server.connections == 1
        assert image_rows(settings)["BAD"] == ("error", "image_fetch_failed: image URL could not be fetched (HTTP 404)")
        assert image_rows(settings)["CORRUPT"][0] == "error"
        atime_works = was_read(corrupt, lambda: corrupt.read_bytes())  # reads are visible on this file system
        again = build_index(settings, BuildOptions(catalog=catalog, progress=False), encoder=encoder)
        assert server.connections == 1, "a full rebuild fetched the failed image again"
        assert again.images_failed == 0 and image_rows(settings)["BAD"][0] == "error"
        assert not (atime_works and was_read(corrupt, lambda: build_index(
            settings, BuildOptions(catalog=catalog, progress=False), encoder=encoder))), "a rebuild read the file again"
        extra = write_catalog(tmp_path / "extra.csv", [{"product_id": "G9", "title": "Another", "image": ""}])
        build_index(settings, BuildOptions(catalog=extra, full=False, progress=False), encoder=encoder)
        assert server.connections == 1, "an incremental build read the failed image again"
        # Retrying is explicit: upsert the product, or a build with retry_failed.
        retried = was_read(corrupt, lambda: build_index(
            settings, BuildOptions(catalog=catalog, progress=False, retry_failed=True), encoder=encoder))
        assert server.connections == 2 and retried == atime_works
    finally:
        server.close()
