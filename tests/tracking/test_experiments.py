"""What a user does after a change of params: `dvc exp run -S`, tracked in DVC and MLflow, the runs compared by
`python -m segnet.compare` and side by side in `mlflow ui`, read in a real headless Chromium.

The browser needs Debian's chromium and chromium-driver; the test installs them with apt-get when it runs as
root, and skips, saying why, where it cannot. Its screenshot, pass or fail, is tests/artifacts/mlflow-compare-runs.png.
"""

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.entities import Run
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.helpers import apt_install_or_skip, clean_env, free_port, main_in_process, run, serving, tiny_project
from tests.test_pipeline import runs_by_stage


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project, committed, in which a user ran two experiments: lr-high in the workspace, then lr-low in
    a temporary copy (--temp), whose runs must still land in the root store."""
    root = tiny_project(tmp_path_factory.mktemp("experiments"))
    run(["dvc", "exp", "run", "-n", "lr-high", "-S", "train.lr=0.01"], root)
    # DVC writes this value as `5e-05`, which only a YAML 1.2 reader takes for a number.
    run(["dvc", "exp", "run", "--temp", "-n", "lr-low", "-S", "train.lr=0.00005"], root)
    return root


@pytest.fixture(scope="module")
def experiments(project) -> dict[str, Run]:
    """The evaluate run of each experiment, by name."""
    return {found.data.tags["dvc_experiment"]: found for found in runs_by_stage(project)["evaluate"]}


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).parents[1] / "artifacts" / "mlflow-compare-runs.png"
NESTED_SCREENSHOT = SCREENSHOT.with_name("mlflow-nested-runs.png")
# Without the background-networking flags Chromium keeps calling home, and a closed network refuses it.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# One row of a section of the page: the texts after its label, one per run, left to right. Params and run
# details are tables. Metrics are a virtualized grid: a column of names and a scrolled grid of values that
# renders only the rows near its view, where a row's name and values share their offset from the top.
READ_ROW = """
const [title, label] = arguments;
const header = [...document.querySelectorAll(".du-bois-light-collapse-header")]
  .find(element => element.innerText.trim() === title);
if (!header) return [];
const section = header.closest(".du-bois-light-collapse-item");
const name = [...section.querySelectorAll("th, a")].find(element => element.innerText.trim() === label);
const values = [...section.querySelectorAll("[role=grid]")]
  .find(grid => getComputedStyle(grid).overflowY === "auto");
if (!name) {
  if (values) values.scrollTop += values.clientHeight / 2;  // as a user scrolls down to look for it
  return [];
}
const row = name.closest("tr");
if (row) return [...row.cells].slice(1).map(cell => cell.innerText.trim());
const top = name.closest("[style*=top]").style.top;
values.scrollTop = parseFloat(top);  // the row in view, for the screenshot
return [...values.querySelectorAll("[style*=top]")].filter(cell => cell.style.top === top)
  .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left)).map(cell => cell.innerText.trim());
"""
# The run names the experiment's runs table shows, top to bottom; with a name, first clicks the expander of
# that run's row (a parent run's "+"), and returns [] if the row or its expander is not rendered yet.
RUN_NAMES = """
const cells = () => [...document.querySelectorAll("[role=row]")]
  .sort((a, b) => a.getAttribute("aria-rowindex") - b.getAttribute("aria-rowindex"))
  .map(row => row.querySelector("[role=gridcell][col-id='attributes.`Run Name`']")).filter(cell => cell);
const name = cell => (cell.querySelector("a") || cell).innerText.trim();
if (arguments[0]) {
  const cell = cells().find(cell => name(cell) === arguments[0]);
  const expander = cell && cell.querySelector("button[data-component-id*='runnamecellrenderer']");
  if (!expander) return [];
  expander.click();
}
return cells().map(name);
"""
# The row labels of one section's table.
READ_LABELS = """
const header = [...document.querySelectorAll(".du-bois-light-collapse-header")]
  .find(element => element.innerText.trim() === arguments[0]);
return [...header.closest(".du-bois-light-collapse-item").querySelectorAll("th")].map(th => th.innerText.trim());
"""


def test_experiments_with_changed_params_are_tracked_in_dvc_and_mlflow(project, experiments):
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    in_dvc = {
        exp["name"]: exp["data"]
        for baseline in shown
        for exp in (baseline.get("experiments") or [])
        for exp in exp["revs"]
    }
    assert {"lr-high", "lr-low"} <= set(in_dvc)
    assert in_dvc["lr-high"]["params"]["params.yaml"]["data"]["train"]["lr"] == 0.01
    assert "miou" in in_dvc["lr-low"]["metrics"]["metrics/evaluate.json"]["data"]

    assert experiments["lr-high"].data.params["train.lr"] == "0.01"
    assert experiments["lr-low"].data.params["train.lr"] == "5e-05"
    trained = {found.info.run_id for found in runs_by_stage(project)["train"]}
    assert experiments["lr-low"].data.tags["train_run_id"] in trained
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))

    # The two experiments' test scores, each with the interval its evaluate run logged, and their paired difference.
    compared = run([sys.executable, "-m", "segnet.compare", "lr-low", "lr-high"], project).stdout.splitlines()
    assert compared[0].startswith("test miou on the same 12 panels; 95% intervals from 1000 resamples")
    for line, side, name in zip(compared[1:3], "AB", ["lr-low", "lr-high"], strict=True):
        metrics = experiments[name].data.metrics
        assert line.split()[:4] == [side, name, "(run", f"{experiments[name].info.run_id[:8]})"]
        assert line.split()[-3:] == [
            f"{metrics['miou']:.4f}",
            f"[{metrics['miou_ci_low']:.4f},",
            f"{metrics['miou_ci_high']:.4f}]",
        ]
    difference = experiments["lr-high"].data.metrics["miou"] - experiments["lr-low"].data.metrics["miou"]
    assert compared[3].split()[:4] == ["B", "-", "A", f"{difference:+.4f}"]
    low, high = (float(bound.strip("[],")) for bound in compared[3].split()[4:6])
    above = "B is above A: the interval of the difference excludes 0"
    below = "B is below A: the interval of the difference excludes 0"
    holds = "the test set does not tell A and B apart: the interval of the difference holds 0"
    # The verdict follows from the printed interval; a bound printed as 0.0000 hides which side of 0 it lies on.
    expected = {above} if low > 0 else {below} if high < 0 else {holds} if low < 0 < high else {holds, above, below}
    assert low <= high and compared[4] in expected, compared
    # The workspace holds what the last `dvc exp run` without --temp left there: lr-high's model.
    workspace = main_in_process("segnet.compare", project, "lr-low", "workspace").stdout.splitlines()
    assert workspace[1:3] == compared[1:3]
    train_run = experiments["lr-low"].data.tags["train_run_id"]
    refused = main_in_process("segnet.compare", project, train_run, "lr-high")
    assert refused.returncode == 1
    assert f"run {train_run}: a train run, not an evaluate run" in refused.stderr


def _install_chromium_or_skip() -> None:
    """Installs Debian's chromium and chromium-driver when missing; skips, saying why, when that cannot be done.

    Playwright's and Selenium's own browser downloads need hosts a closed network does not reach; Debian's
    packages come from apt, which does, and give a browser and a driver of the same version.
    """
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return
    missing = f"{CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, chromium-driver) are not installed"
    apt_install_or_skip(["chromium", "chromium-driver"], missing)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    _install_chromium_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    # An explicit driver path: otherwise Selenium Manager tries to download one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def mlflow_ui(root: Path) -> Iterator[str]:
    """`make ui`'s command on the project's store, on a free loopback port; yields its URL.

    One worker and no job runner: the page needs neither, and the runner's seven queue consumers would take
    seconds to start and to stop on two cores.
    """
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        "mlflow",
        "ui",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--workers",
        "1",
    ]
    env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with serving(command, root, env, f"{url}/health", root / "mlflow-ui.log"):
        yield url


def _row(browser: webdriver.Chrome, section: str, label: str) -> list[str]:
    return browser.execute_script(READ_ROW, section, label)


def _compared(browser: webdriver.Chrome) -> bool:
    """Whether a single page app has rendered both runs' names, the param and the metric."""
    rows = (("Run details", "Run Name:"), ("Parameters", "train.lr"), ("Metrics", "miou"))
    return all(len(_row(browser, section, label)) == 2 for section, label in rows)


def test_mlflow_ui_compares_two_runs_that_differ_in_one_param(browser, project, experiments):
    # The evaluate runs carry the training params next to the test metrics: the pair a user compares.
    baseline, changed = experiments["lr-low"], experiments["lr-high"]
    differing = {name for name, value in changed.data.params.items() if baseline.data.params.get(name) != value}
    assert differing == {"train.lr"} and changed.data.params["train.lr"] == "0.01"

    ids = [baseline.info.run_id, changed.info.run_id]
    # A desktop screen, tall enough to show the comparison down to the metrics without scrolling the page.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1600, "height": 1600, "deviceScaleFactor": 1, "mobile": False}
    )
    with mlflow_ui(project) as url:
        browser.get(
            f"{url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([baseline.info.experiment_id])}"
        )
        try:
            WebDriverWait(browser, 180).until(_compared, message="no comparison of both runs rendered within 180 s")
            for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
                if close.is_displayed():
                    close.click()  # the assistant's side panel, a third of the width
            shown = {
                label: _row(browser, section, label)
                for section, label in (
                    ("Run details", "Run ID:"),
                    ("Run details", "Run Name:"),
                    ("Parameters", "train.lr"),
                    ("Metrics", "miou"),
                )
            }
            # What a user does next: keep only the params that differ between the runs.
            browser.find_element(By.CSS_SELECTOR, "button[aria-label='Parameters - Show diff only']").click()
            differing_shown = browser.execute_script(READ_LABELS, "Parameters")
        finally:
            SCREENSHOT.parent.mkdir(exist_ok=True)
            browser.save_screenshot(str(SCREENSHOT))
        # The runs table: one row per pipeline execution; expanding lr-low's shows the stage runs it holds.
        browser.get(f"{url}/#/experiments/{baseline.info.experiment_id}/runs")
        try:
            WebDriverWait(browser, 120).until(
                lambda page: "lr-low" in page.execute_script(RUN_NAMES, None), message="no lr-low row within 120 s"
            )
            collapsed = browser.execute_script(RUN_NAMES, None)
            WebDriverWait(browser, 60).until(
                lambda page: page.execute_script(RUN_NAMES, "lr-low"), message="lr-low's row has no expander"
            )
            WebDriverWait(browser, 60).until(
                lambda page: "train lr-low" in page.execute_script(RUN_NAMES, None), message="lr-low did not expand"
            )
            expanded = browser.execute_script(RUN_NAMES, None)
        finally:
            browser.save_screenshot(str(NESTED_SCREENSHOT))

    assert shown["Run ID:"] == ids
    assert shown["Run Name:"] == ["evaluate lr-low", "evaluate lr-high"]
    assert shown["train.lr"] == ["5e-05", "0.01"]
    assert differing_shown == ["train.lr"]
    # Collapsed, the table lists the two executions, newest first, and no stage run.
    assert collapsed == ["lr-low", "lr-high"]
    # Expanded, lr-low's stage runs follow its row. Generate and prepare did not run again (lr-high had made
    # the same data), so only train and evaluate are there.
    assert sorted(expanded[1:3]) == ["evaluate lr-low", "train lr-low"]
    assert expanded[:1] + expanded[3:] == ["lr-low", "lr-high"]
    # The page rounds metrics to three decimals (or three significant digits below 0.001).
    assert [float(value) for value in shown["miou"]] == pytest.approx(
        [baseline.data.metrics["miou"], changed.data.metrics["miou"]], abs=5e-4
    )
