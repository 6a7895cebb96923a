"""The command line end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from tests.support import SampleIndex, run_cli


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-sample")
    result = run_cli("sample", "--out", str(out), "--n", "60", "--seed", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_sample_build_search_end_to_end(small_catalog: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    built = run_cli("index", "build", "--catalog", str(small_catalog / "catalog.csv"), "--index-dir", str(index_dir),
                    "--json", "--quiet")
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["read"] == summary["indexed"] == 60 and summary["skipped"] == 0
    manifest_dir = index_dir / "versions" / summary["version_id"]
    manifest = json.loads((manifest_dir / "manifest.json").read_text())
    assert manifest["model"] == "catalens-demo" and manifest["dim"] == 128 and manifest["factory"] == "Flat"
    assert json.loads((index_dir / "ACTIVE").read_text())["version_id"] == summary["version_id"]

    found = run_cli("search", "text", "red mug", "-k", "3", "--json", "--index-dir", str(index_dir))
    assert found.returncode == 0, found.stderr
    body = json.loads(found.stdout)
    assert len(body["results"]) == 3 and body["index_version"] == summary["version_id"]

    image = next((small_catalog / "images").glob("*_0.jpg"))
    by_image = run_cli("search", "image", str(image), "--json", "--index-dir", str(index_dir))
    assert by_image.returncode == 0, by_image.stderr
    assert json.loads(by_image.stdout)["results"][0]["product_id"] == image.name.rsplit("_", 1)[0]

    versions = run_cli("index", "versions", "--index-dir", str(index_dir), "--json")
    assert [v["active"] for v in json.loads(versions.stdout)] == [True]


def test_bad_rows_are_skipped_recorded_and_listed(small_catalog: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    lines = (small_catalog / "catalog.csv").read_text().splitlines()[:11]
    lines[3] = lines[3].replace(lines[3].split(",")[0], "", 1)  # row 3 loses its product_id
    catalog.write_text("\n".join(lines) + "\n")
    shutil.copytree(small_catalog / "images", tmp_path / "images")
    built = run_cli("index", "build", "--catalog", str(catalog), "--index-dir", str(tmp_path / "idx"), "--quiet")
    assert built.returncode == 0, built.stderr
    assert "read 10 rows, indexed 9, skipped 1" in built.stdout
    assert "catalens index errors" in built.stdout
    errors = run_cli("index", "errors", "--index-dir", str(tmp_path / "idx"), "--json")
    rows = json.loads(errors.stdout)
    assert len(rows) == 1 and rows[0]["row"] == 3 and rows[0]["field"] == "product_id"

    strict = run_cli("index", "build", "--catalog", str(catalog), "--index-dir", str(tmp_path / "idx2"),
                     "--strict", "--quiet")
    assert strict.returncode != 0
    assert strict.stderr.strip().count("\n") == 0, strict.stderr
    assert "row 3" in strict.stderr and "product_id" in strict.stderr and "Traceback" not in strict.stderr


@pytest.mark.parametrize("argv,needle", [
    (["index", "build", "--catalog", "/nonexistent/catalog.csv"], "not found"),
    (["search", "text", "red mug"], "no index"),
    (["search", "text", ""], "invalid query"),
    (["search", "image", "/nonexistent.jpg"], "not found"),
    (["index", "build", "--catalog", "{tmp}/x.csv", "--model", "ViT-B-32"], "needs --pretrained"),
    (["index", "rollback"], "no version"),
])
def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path: Path, argv: list[str], needle: str) -> None:
    (tmp_path / "x.csv").write_text("product_id,title\np1,red mug\n")
    result = run_cli(*(a.replace("{tmp}", str(tmp_path)) for a in argv), "--index-dir", str(tmp_path / "empty"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("catalens: error:") and needle in lines[0], result.stderr


@pytest.mark.parametrize("value,needle", [("nope", 'field "facet_weights"'), ('{"category": -1}', "facet_weights.category")])
def test_a_bad_setting_in_the_environment_is_one_line(tmp_path: Path, value: str, needle: str) -> None:
    # Not JSON where an object is expected was a pydantic-settings traceback.
    result = run_cli("index", "versions", "--index-dir", str(tmp_path), env={"CATALENS_FACET_WEIGHTS": value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("catalens: error: invalid setting") and needle in lines[0], \
        result.stderr


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of the tree built by cli.main (each package registers its own)."""
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += command_paths(sub, (*prefix, name))
    return found


def test_every_command_documents_each_of_its_flags_and_subcommands() -> None:
    from cli.main import build_parser

    paths = command_paths(build_parser())
    leaves = [path for path, parser in paths if parser.get_default("handler") is not None]
    assert {("index", "build"), ("search", "text"), ("serve",), ("demo",), ("eval",), ("sample",), ("train-model",),
            ("db", "upgrade"), ("bench", "query")} <= set(leaves)
    for path, parser in paths:
        text = parser.format_help()
        assert text.startswith(f"usage: catalens {' '.join(path)}".rstrip()), path
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, (path, flag)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action._choices_actions:
                    assert sub.help, (path, sub.dest)  # a one-line description in the parent's listing


def test_help_runs_as_a_process() -> None:
    result = run_cli("index", "build", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: catalens index build")
    assert "--images-root" in result.stdout and not result.stderr


def test_eval_reports_every_query_set(sample_index: SampleIndex) -> None:
    result = run_cli("eval", "--index-dir", str(sample_index.index_dir), "--queries",
                     str(sample_index.sample_dir / "queries.jsonl"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"plain", "color_swap", "image", "plain_zh", "bare", "keyword", "nomatch", "mixed"}
    for metrics in report.values():  # the keys every set always had, and the no-good-match share
        assert set(metrics) == {"n", "recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "flagged"}
        assert 0 <= metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"] <= 1
        assert 0 <= metrics["flagged"] <= 1
    assert report["image"]["recall@1"] >= 0.7
    assert report["plain"]["recall@10"] >= 0.8 and report["plain_zh"]["recall@10"] >= 0.8
    assert report["keyword"]["recall@1"] >= 0.9
    assert report["nomatch"]["flagged"] > report["plain"]["flagged"]
