"""The README and docs/: the results table matches the committed metrics, every relative link resolves, the
README stays short, and no page keeps a dated log (history is in git)."""

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from segnet.report import END, START, read_table, replace_table, results_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
METRICS = ROOT / "metrics"
MAX_LINES = {"README.md": 250, "docs/performance.md": 250}


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def report(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segnet.report", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_readme_table_is_what_the_report_writes_from_the_committed_metrics():
    assert read_table(README.read_text()) == results_table(METRICS), "README.md is stale: run `make readme`"
    checked = report("--check")
    assert checked.returncode == 0, checked.stderr


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    """The README and the metrics files, copied: the report may rewrite these."""
    (tmp_path / "metrics").mkdir()
    for name in ("evaluate.json", "train.json", "prepare.json"):
        shutil.copy(METRICS / name, tmp_path / "metrics" / name)
    shutil.copy(README, tmp_path / "README.md")
    return tmp_path / "README.md", tmp_path / "metrics"


def test_the_report_rewrites_a_table_left_stale_by_new_metrics_and_nothing_else(copies):
    readme, metrics = copies
    before = readme.read_text()
    scores = json.loads((metrics / "evaluate.json").read_text())
    scores["miou"] = 0.5
    (metrics / "evaluate.json").write_text(json.dumps(scores))
    paths = ("--readme", str(readme), "--metrics", str(metrics))

    checked = report("--check", *paths)
    assert checked.returncode == 1
    assert "0.5000" in checked.stderr and "make readme" in checked.stderr, checked.stderr
    assert readme.read_text() == before

    rewritten = report(*paths)
    assert rewritten.returncode == 0, rewritten.stderr
    after = readme.read_text()
    assert read_table(after) == results_table(metrics)
    assert "| **0.5000** [" in read_table(after)
    assert replace_table(after, read_table(before)) == before  # only the table changed
    assert report("--check", *paths).returncode == 0


def test_the_report_rewrites_a_table_edited_by_hand(copies):
    readme, metrics = copies
    text = readme.read_text()
    readme.write_text(replace_table(text, "| metric | value |\n|---|---:|\n| test mIoU | 0.99 |\n"))
    checked = report("--check", "--readme", str(readme), "--metrics", str(metrics))
    assert checked.returncode == 1 and "table line 3" in checked.stderr, checked.stderr
    assert report("--readme", str(readme), "--metrics", str(metrics)).returncode == 0
    assert readme.read_text() == text


def test_the_table_shows_the_papers_four_scores(copies):
    _, metrics = copies
    scores = json.loads((metrics / "evaluate.json").read_text())
    scores |= {"pixel_accuracy": 0.91234, "mean_class_accuracy": 0.81234, "miou": 0.71234, "boundary_f1": 0.61234}
    (metrics / "evaluate.json").write_text(json.dumps(scores))
    rows = results_table(metrics).splitlines()
    assert rows[2].startswith("| test mIoU, 11 classes (95% interval) | **0.7123** [")
    assert rows[4:7] == [
        "| test global accuracy (G) | 0.9123 |",
        "| test class average accuracy (C) | 0.8123 |",
        "| test boundary F1 (BF) | 0.6123 |",
    ]
    (metrics / "evaluate.json").write_text(json.dumps(scores | {"boundary_f1": "high"}))
    with pytest.raises(ValueError, match="evaluate.json boundary_f1: must be a number, got 'high'"):
        results_table(metrics)
    del scores["boundary_f1"]
    (metrics / "evaluate.json").write_text(json.dumps(scores))
    with pytest.raises(ValueError, match="evaluate.json: no key 'boundary_f1'"):
        results_table(metrics)


def test_a_readme_without_its_markers_or_a_metrics_file_is_refused_by_name(copies):
    readme, metrics = copies
    with pytest.raises(ValueError, match="README.md: needs one line"):
        replace_table("# no table here\n", "| a |\n")
    with pytest.raises(ValueError, match="README.md: needs one line"):
        read_table(f"{END}\n{START}\n")
    (metrics / "train.json").unlink()
    with pytest.raises(ValueError, match="train.json: not found"):
        results_table(metrics)
    refused = report("--readme", str(readme), "--metrics", str(metrics))
    assert refused.returncode == 1 and "train.json: not found" in refused.stderr, refused.stderr


# [text](target) and ![alt](target), with an optional title; and reference definitions `[name]: target`.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
CODE = re.compile(r"^\s*(```|~~~).*?^\s*\1[^\n]*$|`[^`\n]*`", re.MULTILINE | re.DOTALL)


def relative_links(text: str) -> list[str]:
    """The targets of the links in Markdown `text` that point into the repository, anchors and queries
    stripped; links inside code are not links."""
    prose = CODE.sub("", text)
    targets = [*INLINE_LINK.findall(prose), *REFERENCE_LINK.findall(prose)]
    local = [target for target in targets if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|//|#", target)]
    return [urllib.parse.unquote(re.split(r"[#?]", target)[0]) for target in local]


def test_the_link_finder_finds_links_and_images_but_not_urls_anchors_or_code():
    text = (
        'See [the docs](docs/data.md#limits) and ![a picture](tests/screenshots/x.png "title").\n'
        "[web](https://example.com) [anchor](#layout) `[code](not/a/link.md)`\n"
        "```\n[block](not/a/link/either.md)\n```\n[ref]: ../Makefile\n"
    )
    assert relative_links(text) == ["docs/data.md", "tests/screenshots/x.png", "../Makefile"]


def test_every_relative_link_in_the_readme_and_docs_resolves_to_a_file_a_clone_has():
    broken, targets = [], []
    for page in pages():
        for target in relative_links(page.read_text()):
            path = (page.parent / target).resolve()
            name = f"{page.relative_to(ROOT)}: {target}"
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(name)
            else:
                targets.append((name, path))
    assert not broken, f"links to nothing: {broken}"
    # An ignored file (a DVC output such as metrics/predictions.png) exists here but not in a fresh clone.
    if targets and (ROOT / ".git").exists() and shutil.which("git"):
        listed = "".join(f"{path.relative_to(ROOT)}\n" for _, path in targets)
        ignored = subprocess.run(
            ["git", "check-ignore", "--stdin"], cwd=ROOT, input=listed, capture_output=True, text=True, timeout=60
        ).stdout.split()
        assert not ignored, f"links to files git ignores, which a clone lacks: {ignored}"


@pytest.mark.parametrize("name", sorted(MAX_LINES))
def test_the_readme_and_the_performance_page_stay_short(name):
    page = ROOT / name
    if not page.exists():
        assert name != "README.md"
        return  # docs/performance.md is checked once it is written
    lines = len(page.read_text().splitlines())
    assert lines <= MAX_LINES[name], f"{name}: {lines} lines, at most {MAX_LINES[name]}"


def test_no_page_keeps_a_dated_log():
    date = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    dated = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in pages()
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if date.search(line)
    ]
    assert not dated, "the current figure and the command that measures it, not a dated log:\n" + "\n".join(dated)
