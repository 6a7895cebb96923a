"""RELIABILITY.md row 15: schemathesis against the app's own OpenAPI, in-process (ASGI).

Every operation, the multipart image upload and the admin routes (with the API key) get
bounded, derandomized examples from schemathesis' coverage and fuzzing phases, positive and
negative. The checks: no 5xx (a 503 only with Retry-After, as documented), every error in
the documented {"error": {"code", "message"}} shape, every status code declared in the
route's OpenAPI `responses`, content types and bodies matching the schema, and invalid
input rejected with a 4xx.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis

# Imported here, not lazily inside a deep Hypothesis call stack: pytest's assertion rewriting
# compiles it, and CPython 3.11.7's compile raised "AST constructor recursion depth mismatch" there.
import schemathesis.wfc.escalation  # noqa: F401
from hypothesis import HealthCheck, settings

from tests.support import SampleIndex

API_KEY = "schemathesis-admin-key"
# Examples per operation in the fuzzing phase (schemathesis' default); the coverage phase adds
# its boundary cases on top. All 12 operations take ~20 s on 2 cores once the session's model
# and index exist (more while a failure is being shrunk).
MAX_EXAMPLES = 100


class LateBoundApp:
    """An ASGI app forwarding to the one the `fuzzed_app` fixture builds.

    The schema must exist at import time for `schema.parametrize()`, while the app needs the
    session's loaded model and index; `schemathesis.pytest.from_fixture` would defer the
    schema instead, but (schemathesis 4.32.5) it sets `Function._nodeid`, which pytest 9.2
    no longer has.
    """

    target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.target is not None, "the fuzzed_app fixture binds the app"
        await self.target(scope, receive, send)


def openapi_document() -> dict[str, Any]:
    """The app's own OpenAPI document, as /openapi.json serves it (no model is loaded for it)."""
    from catalens.config import Settings
    from retrieval.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(index_dir=Path(tmp))).openapi()


APP = LateBoundApp()
schema = schemathesis.openapi.from_dict(openapi_document())
schema.app = APP


@pytest.fixture(scope="module")
def fuzzed_app(sample_index: SampleIndex, encoder: Any, reranker: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app on a private copy of the sample index: admin upserts and deletes must not touch the shared one."""
    from schemathesis.python.asgi import shutdown_lifespans

    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from indexer.live import IndexEditor
    from retrieval.app import create_app
    from retrieval.searcher import Searcher

    index_dir = tmp_path_factory.mktemp("schemathesis") / "index"
    shutil.copytree(sample_index.index_dir, index_dir)
    cfg = Settings(index_dir=index_dir, threads=1, api_key=API_KEY, max_upload_bytes=2 * 1024 * 1024)
    searcher = Searcher(cfg, create_session_factory(create_db_engine(cfg.db_url)), encoder, reranker=reranker)
    searcher.reload()
    APP.target = create_app(cfg, searcher=searcher, editor=IndexEditor(cfg, encoder, reranker))
    yield APP.target
    shutdown_lifespans()  # stops the app's lifespan (its index watcher) that schemathesis started
    APP.target = None


@schemathesis.check
def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except the documented 503 (index not ready, database busy) that carries Retry-After."""
    if response.status_code >= 500:
        documented = response.status_code == 503 and "retry-after" in {k.lower() for k in response.headers}
        assert documented, f"server error {response.status_code}: {response.text[:500]}"
    return None


@schemathesis.check
def documented_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is {"error": {"code": str, "message": non-empty str}} and nothing else."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} is not JSON: {response.content[:300]!r}") from None
    err = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
    assert isinstance(err, dict) and set(err) == {"code", "message"}, f"not the error shape: {body!r:.300}"
    assert isinstance(err["code"], str) and err["code"], f"empty or non-string code: {body!r:.300}"
    assert isinstance(err["message"], str) and err["message"].strip(), f"empty message: {body!r:.300}"
    return None


CHECKS = [
    no_undocumented_server_error,
    documented_error_shape,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]


@pytest.mark.reliability
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_row15_schemathesis_finds_no_server_errors_and_only_documented_errors(case: Any, fuzzed_app: Any) -> None:
    """Row 15: schemathesis (positive and negative cases, all operations, uploads, admin with the key)."""
    case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=CHECKS)
