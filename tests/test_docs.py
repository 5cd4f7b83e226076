"""The README stays a short front door whose links work, and the documentation site (docs/,
mkdocs.yml) builds without a warning: a broken link or anchor, a page missing from the nav, or an
API reference to a name that no longer exists fails here rather than on the published site."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 230
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(markdown: str) -> list[str]:
    """The targets of the Markdown links and images outside code blocks that point into the
    repository (not to a web address or an anchor of the same page), without their anchors."""
    prose = FENCE.sub("", markdown)
    targets = [target.split("#", 1)[0] for target in LINK.findall(prose)]
    return [target for target in targets
            if target and not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES} and move the detail "
        "into docs/")


def test_readme_links_point_to_files_that_exist():
    links = relative_links((ROOT / "README.md").read_text())
    assert "docs/index.md" in links  # the parser finds links at all
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_links_ignore_code_web_addresses_and_anchors():
    markdown = ("[a](docs/a.md#part) ![b](docs/images/b.png) [c](https://example.org) [d](#here)\n"
                "```bash\npython eval.py eval.shots=[1,5](not/a/link.md)\n```\n")
    assert relative_links(markdown) == ["docs/a.md", "docs/images/b.png"]


def test_docs_site_builds_strictly(tmp_path):
    """mkdocs build --strict: every page in the nav, every link and anchor resolved, every
    mkdocstrings identifier found (read statically from the source), README.md's Python API
    example included into docs/python-api.md. About 2 seconds."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # no advert for its successor
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    api_page = (site / "python-api" / "index.html").read_text()
    assert "MetaLearner.load" in api_page  # the example came in from README.md
    assert "metalearn.algorithms.base.EpisodicModule" in (
        site / "reference" / "algorithms" / "index.html").read_text()
    assert (site / "images" / "adaptation_speed.png").is_file()


@pytest.mark.slow
def test_the_comparison_example_of_the_evaluation_page_runs_as_written(tmp_path, monkeypatch):
    """docs/evaluation.md's "From Python" block, on two checkpoints it names a.ckpt and b.ckpt
    (two ProtoNets untrained from different seeds: the example is about the calls), scores both
    on the same episodes: a checkpoint compared with a different one gives one pair."""
    from metalearn import MetaLearner
    from tests.test_api import python_block

    monkeypatch.chdir(tmp_path)
    for name, seed in (("a", 1), ("b", 2)):
        MetaLearner("protonet", seed=seed, output_dir=tmp_path / name).save(f"{name}.ckpt")
    namespace: dict = {}
    exec(python_block((ROOT / "docs" / "evaluation.md").read_text(), "From Python"), namespace)
    comparison, pairs = namespace["comparison"], namespace["pairs"]
    assert comparison["task"]["test_episodes"] == 200 and len(comparison["checkpoints"]) == 2
    assert len(pairs) == 1 and (pairs[0]["a"], pairs[0]["b"]) == (1, 2)
    assert (tmp_path / "outputs" / "compares" / "ab" / "comparison.json").is_file()
