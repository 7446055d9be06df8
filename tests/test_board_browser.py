"""`ftune board`'s pages in a real browser (headless Chromium through Playwright): `ftune board --port 0` in a
subprocess over tiny-model runs trained here (two classify runs on one split, one of them also evaluated on other
data, ner, qa, a 2-trial sweep, a broken folder). Every page opens without console errors; the runs table sorts and
filters; a confusion-matrix cell (clicked, or chosen from the keyboard) lists exactly the rows of
eval_predictions.jsonl with that reference and prediction; the fixed/broken counts and rows of two runs equal a
computation from their two files; an evaluation shows its own figures and rows; the sweep page lists its trials;
"Try it" answers what `ftune predict` prints; a run deleted while its page is open shows the board's message; with
an API key the pages work once opened with `?key=`; an empty folder says how to make a run, and shows the first
one made without a reload. Screenshots of every page go to the test's folder and to /tmp/board-shots/.

Marked `browser` (left out of the default run; .ci/run runs them); they skip where playwright or Chromium is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, invoke, read_json, read_jsonl
from tests.test_classify import sentiment_rows, write_jsonl
from tests.test_ner import sentences, write_conll
from tests.test_qa import qa_rows

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path("/tmp/board-shots")
READY = re.compile(r" at (http://[^/\s]+)/")
# Tiny runs, seconds each, in fp32 on every CPU. Run A trains 4 steps and B 40 on the same data and split, so A
# confuses the classes and B fixes some rows (the tests compute what they compare from the files either way).
COMMON = ["--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--logging-steps", "2", "--precision", "fp32"]
MS = 1000
MARKUP = '<img src=x onerror="window.injected=1"> <b>&amp;</b>'


@pytest.fixture(scope="module")
def playwright_api():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests drive Chromium with playwright "
                                   "(pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    return sync_api


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_bert):
    """A folder of runs as a user would have it."""
    root = tmp_path_factory.mktemp("board") / "runs"
    root.mkdir()
    data = tmp_path_factory.mktemp("data")
    rows = sentiment_rows(90, labels=("negative", "neutral", "positive"))
    for row in rows[::5]:
        row["text"] += f" {MARKUP}"   # data is untrusted: the pages must show this as text
    sentiment = write_jsonl(data / "sentiment.jsonl", rows)

    def train(*args):
        result = invoke(*args)
        assert result.exit_code == 0, result

    for name, steps in (("classify-a", "4"), ("classify-b", "40")):
        train("classify", "--model", tiny_bert, "--data", sentiment, "--output-dir", root / name, "--val-fraction",
              "0.3", "--max-steps", steps, *COMMON)
    other = write_jsonl(data / "other.jsonl", sentiment_rows(24, seed=5, labels=("negative", "neutral", "positive")))
    train("eval", root / "classify-b", "--data", other)   # RUN/evals/NAME/
    conll = data / "conll"
    conll.mkdir()
    write_conll(conll / "train.txt", sentences(60, seed=0))
    write_conll(conll / "dev.txt", sentences(20, seed=1))
    train("ner", "--model", tiny_bert, "--data", conll, "--output-dir", root / "ner", "--max-steps", "12", *COMMON)
    capitals = write_jsonl(data / "capitals.jsonl", qa_rows(40, seed=1, unanswerable_every=4))
    train("qa", "--model", tiny_bert, "--data", capitals, "--output-dir", root / "qa", "--epochs", "2",
          "--val-fraction", "0.25", "--doc-stride", "32", *COMMON, "--max-length", "96")
    train("sweep", "classify", "--model", tiny_bert, "--data", sentiment, "--output-dir", root / "sweep",
          "--val-fraction", "0.3", "--max-steps", "4", "--eval-steps", "2", *COMMON, "--param", "lr=1e-3..3e-2:log",
          "--trials", "2", "--seed", "42")
    broken = root / "broken-run"
    shutil.copytree(root / "classify-a", broken)
    (broken / "ftune.yaml").write_text("task: [unclosed\n")
    return root


class Board:
    """`ftune board FOLDER --port 0` in a subprocess; `url` once its ready line has been read."""

    def __init__(self, folder: Path, *options: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "ftune", "board", str(folder), "--port", "0", *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                        cwd=str(ROOT))
        line = self.process.stdout.readline()
        found = READY.search(line)
        if not found:
            self.stop()
            raise AssertionError(f"no ready line: {line!r}; stderr: {self.process.stderr.read()}")
        self.url = found.group(1)

    def api(self, path: str):
        import httpx

        return httpx.get(self.url + path, timeout=120)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def board(runs_root):
    server = Board(runs_root)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(playwright_api):
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("board-shots")
    SHOTS.mkdir(parents=True, exist_ok=True)
    return folder


class Tab:
    """A browser page that records console errors and uncaught exceptions, and saves screenshots."""

    def __init__(self, browser, base: str, shots: Path):
        self.page = browser.new_page(viewport={"width": 1360, "height": 900})
        self.page.set_default_timeout(60 * MS)
        self.base, self.shots, self.errors = base, shots, []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def open(self, path: str):
        self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")
        return self.page

    def shot(self, name: str):
        self.page.evaluate("window.scrollTo(0, 0)")   # sticky headers are drawn where the page was scrolled
        file = self.shots / f"{name}.png"
        self.page.screenshot(path=str(file), full_page=True)
        shutil.copy(file, SHOTS / file.name)


@pytest.fixture
def tab(browser, board, shots):
    opened = Tab(browser, board.url, shots)
    yield opened
    opened.page.close()


def errors_page_rows(page) -> list[str]:
    """The ids of the rows the Errors page lists, once it has loaded them."""
    page.wait_for_selector("main[data-loaded='true']")
    return page.locator("#rows-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")


def wait_for_rows(page, expected: int):
    page.wait_for_function("n => document.querySelector('main').dataset.loaded === 'true' "
                           "&& document.querySelector('main').dataset.total === String(n)", arg=expected)


def reload_rows(page, action):
    """Run `action` (a click, a filter typed) and wait until the Errors page shows the rows it asked for."""
    page.evaluate("document.querySelector('main').dataset.loaded = 'false'")
    action()


def test_every_page_opens_without_console_errors(tab, board, runs_root):
    pages = {
        "runs": ("/", "#runs-table tbody tr"),
        "run-classify": ("/runs/classify-b", "#metrics-table tbody tr"),
        "run-ner": ("/runs/ner", "#classes-table tbody tr"),
        "run-qa": ("/runs/qa", "#metrics-table tbody tr"),
        "errors-classify": ("/runs/classify-a/errors", "main[data-loaded='true']"),
        "errors-ner": ("/runs/ner/errors?wrong=all", "main[data-loaded='true']"),
        "errors-qa": ("/runs/qa/errors?wrong=all", "main[data-loaded='true']"),
        "compare": ("/compare?a=classify-a&b=classify-b", "#count-fixed"),
        "sweep": ("/sweeps/sweep", "#trials-table tbody tr"),
    }
    for name, (path, ready) in pages.items():
        page = tab.open(path)
        page.wait_for_selector(ready)
        assert page.locator("#page-error").is_hidden(), (name, page.locator("#page-error").inner_text())
        tab.shot(name)
        if name.startswith("errors"):
            print(f"{name}: first page of rows in {page.locator('main').get_attribute('data-last-load-ms')} ms")
    assert tab.errors == []

    # The runs table: every run once, the broken folder listed apart with why.
    listing = board.api("/api/runs").json()
    page = tab.open("/")
    page.wait_for_selector("#runs-table tbody tr")
    shown = page.locator("#runs-table tbody input[type=checkbox]").evaluate_all("b => b.map(x => x.dataset.runId)")
    assert sorted(shown) == sorted(run["id"] for run in listing["runs"])
    assert {"classify-a", "classify-b", "ner", "qa", "sweep/trial-000", "sweep/trial-001"} <= set(shown)
    broken = page.locator("#broken-list li")
    assert broken.count() == 1 and "broken-run" in broken.inner_text()
    assert listing["broken"][0]["why"] in broken.inner_text()


def test_the_runs_table_sorts_and_filters(tab, board):
    runs = board.api("/api/runs").json()["runs"]
    page = tab.open("/")
    page.wait_for_selector("#runs-table tbody tr")

    def shown():
        return page.locator("#runs-table tbody input[type=checkbox]").evaluate_all("b => b.map(x => x.dataset.runId)")

    page.locator("#runs-table th[data-sort='metric'] button").click()   # ascending; runs without a metric last
    values = [(run["main_metric"] or {}).get("value") for run in runs]
    ascending = sorted(range(len(runs)), key=lambda i: (values[i] is None, values[i] or 0))
    assert shown() == [runs[i]["id"] for i in ascending]
    assert page.locator("#runs-table th[data-sort='metric']").get_attribute("aria-sort") == "ascending"
    page.locator("#filter-task").select_option("ner")
    assert shown() == [run["id"] for run in runs if run["task"] == "ner"]
    page.locator("#filter-task").select_option("")
    page.locator("#filter-text").fill("classify-")
    assert sorted(shown()) == ["classify-a", "classify-b"]
    assert tab.errors == []


def test_an_evaluation_on_other_data_shows_its_own_figures_and_rows(tab, runs_root):
    (evaluation,) = (runs_root / "classify-b" / "evals").iterdir()
    results = read_json(evaluation / "eval_results.json")
    predictions = read_jsonl(evaluation / "eval_predictions.jsonl")
    page = tab.open(f"/runs/classify-b?eval={evaluation.name}")
    page.wait_for_selector("#metrics-table tbody tr")
    assert page.locator("#eval-select").input_value() == evaluation.name
    shown = dict(zip(page.locator("#metrics-table tbody th").all_inner_texts(),
                     page.locator("#metrics-table tbody td").all_inner_texts()))
    assert float(shown["accuracy"]) == pytest.approx(results["eval_accuracy"], abs=5e-5)
    page.locator("#errors-link").click()
    wrong = {str(r["id"]) for r in predictions if r["prediction"] != r["reference"]}
    wait_for_rows(page, len(wrong))
    assert set(errors_page_rows(page)) == wrong
    assert f"eval={evaluation.name}" in page.url
    assert tab.errors == []


def test_with_an_api_key_the_pages_work_once_opened_with_it(runs_root, browser, shots):
    server = Board(runs_root, "--api-key", "s3cret")
    try:
        tab = Tab(browser, server.url, shots)
        assert server.api("/api/runs").status_code == 401
        page = tab.open("/?key=s3cret")     # sets the cookie the page's own requests carry
        page.wait_for_selector("#runs-table tbody tr")
        page.locator("#runs-table a", has_text="classify-b").click()
        page.wait_for_selector("#metrics-table tbody tr")
        assert "key=" not in page.url
        assert tab.errors == []
    finally:
        server.stop()


def test_an_empty_folder_says_how_to_make_a_run_and_shows_the_first_one_made(tmp_path, runs_root, browser, shots):
    server = Board(tmp_path)
    try:
        tab = Tab(browser, server.url, shots)
        page = tab.open("/")
        page.wait_for_selector("#empty-state:not([hidden])")
        assert "ftune classify" in page.locator("#empty-state").inner_text()
        assert page.locator("#runs-section").is_hidden()
        tab.shot("runs-empty")
        shutil.copytree(runs_root / "classify-a", tmp_path / "first")   # a run appears: the page shows it unasked
        page.wait_for_selector("#runs-table input[data-run-id='first']")
        assert page.locator("#empty-state").is_hidden()
        assert tab.errors == []
    finally:
        server.stop()


def confusion_rows(predictions: list[dict]) -> dict[tuple[str, str], set[str]]:
    cells: dict[tuple[str, str], set[str]] = {}
    for row in predictions:
        cells.setdefault((row["reference"], row["prediction"]), set()).add(str(row["id"]))
    return cells


@pytest.mark.parametrize("start", ["errors", "run"])
def test_a_confusion_cell_lists_exactly_its_rows(tab, runs_root, start):
    cells = confusion_rows(read_jsonl(runs_root / "classify-a" / "eval_predictions.jsonl"))
    # The largest cell off the diagonal (a confusion), else the largest one.
    (reference, prediction), ids = max(cells.items(), key=lambda item: (item[0][0] != item[0][1], len(item[1])))
    assert len(ids) <= 50  # one page of rows
    page = tab.open("/runs/classify-a/errors" if start == "errors" else "/runs/classify-a")
    cell = page.locator(f"#matrix button.cell[data-reference='{reference}'][data-prediction='{prediction}']")
    assert cell.inner_text() == str(len(ids))
    if start == "errors":   # from the keyboard: the cells are buttons
        cell.focus()
        reload_rows(page, lambda: page.keyboard.press("Enter"))
    else:
        reload_rows(page, cell.click)
    if start == "run":
        page.wait_for_url("**/runs/classify-a/errors?*")
    wait_for_rows(page, len(ids))
    assert set(errors_page_rows(page)) == ids
    rows = page.locator("#rows-table tbody tr")
    for i in range(rows.count()):
        assert rows.nth(i).locator("td").nth(2).inner_text() == reference
        assert rows.nth(i).locator("td").nth(3).inner_text() == prediction
    # Every other cell, clicked in turn on the same page, lists its own rows.
    if start == "errors":
        for (ref, pred), cell_ids in cells.items():
            reload_rows(page, page.locator(f"#matrix button.cell[data-reference='{ref}'][data-prediction='{pred}']").click)
            wait_for_rows(page, len(cell_ids))
            assert set(errors_page_rows(page)) == cell_ids, (ref, pred)
        tab.shot("errors-classify-cell")
    assert tab.errors == []


def test_errors_page_filters_wrong_rows_and_text(tab, runs_root):
    predictions = read_jsonl(runs_root / "classify-b" / "eval_predictions.jsonl")
    wrong = {str(r["id"]) for r in predictions if r["prediction"] != r["reference"]}
    page = tab.open("/runs/classify-b/errors")
    wait_for_rows(page, len(wrong))
    assert set(errors_page_rows(page)) == wrong
    reload_rows(page, page.get_by_label("All", exact=True).check)
    wait_for_rows(page, len(predictions))
    held_out = {str(r["id"]): r for r in read_jsonl(read_json(runs_root / "classify-b" / "split.json")["source"])}
    word = "terrible"
    having = {i for i in (str(r["id"]) for r in predictions) if word in held_out[i]["text"]}
    reload_rows(page, lambda: page.get_by_label("Text contains").fill(word))
    wait_for_rows(page, len(having))
    assert set(errors_page_rows(page)) == having
    assert tab.errors == []


def test_text_from_the_data_is_shown_as_text_never_as_markup(tab, runs_root):
    page = tab.open("/runs/classify-a/errors?wrong=all")
    page.wait_for_selector("main[data-loaded='true']")
    texts = page.locator("#rows-table tbody td.text-cell").all_inner_texts()
    assert any(MARKUP in text for text in texts)
    assert page.locator("#rows-table img, #rows-table b").count() == 0
    assert page.evaluate("window.injected") is None
    assert tab.errors == []


def test_qa_errors_mark_the_gold_answer_in_the_context(tab, runs_root):
    predictions = {str(r["id"]): r for r in read_jsonl(runs_root / "qa" / "eval_predictions.jsonl")}
    page = tab.open("/runs/qa/errors?wrong=all")
    wait_for_rows(page, len(predictions))
    rows = page.locator("#rows-table tbody tr")
    for i in range(rows.count()):
        row = rows.nth(i)
        gold = predictions[row.get_attribute("data-id")]["reference"]
        marked = row.locator(".context mark.gold").all_inner_texts()
        assert set(marked) <= set(gold) and bool(marked) == bool(gold)
    assert tab.errors == []


def test_compare_counts_equal_the_two_files(tab, runs_root):
    def right(run):
        return {str(r["id"]): r["prediction"] == r["reference"]
                for r in read_jsonl(runs_root / run / "eval_predictions.jsonl")}

    a, b = right("classify-a"), right("classify-b")
    assert a.keys() == b.keys()
    fixed = {i for i in a if not a[i] and b[i]}
    broken = {i for i in a if a[i] and not b[i]}

    page = tab.open("/")
    page.locator("#runs-table input[data-run-id='classify-a']").check()
    page.locator("#runs-table input[data-run-id='classify-b']").check()
    page.locator("#compare-button").click()
    page.wait_for_url("**/compare?*")
    page.wait_for_selector("#compare-content:not([hidden])")
    assert page.locator("#splits-differ").is_hidden()
    assert page.locator("#count-fixed").inner_text() == str(len(fixed))
    assert page.locator("#count-broken").inner_text() == str(len(broken))
    assert page.locator("#count-both_right").inner_text() == str(sum(a[i] and b[i] for i in a))
    assert page.locator("#count-both_wrong").inner_text() == str(sum(not a[i] and not b[i] for i in a))
    for which, expected in (("fixed", fixed), ("broken", broken)):
        page.locator(f".count[data-which='{which}']").click()
        page.wait_for_function("n => document.querySelectorAll('#diff-table tbody tr').length === n "
                               "&& !document.getElementById('diff-rows').hidden", arg=len(expected))
        ids = page.locator("#diff-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
        assert set(ids) == expected, which
        if which == "fixed":
            tab.shot("compare-fixed")
        page.locator(f".count[data-which='{which}']").click()   # closes the list

    # Runs scored on other rows: the page says so and compares their metrics only.
    page = tab.open("/compare?a=classify-a&b=ner")
    page.wait_for_selector("#compare-content:not([hidden])")
    assert "The splits differ" in page.locator("#splits-differ").inner_text()
    assert page.locator("#counts-card").is_hidden() and page.locator("#cmp-metrics tbody tr").count() > 0
    tab.shot("compare-splits-differ")
    assert tab.errors == []


def test_sweep_page_lists_the_trials_and_links_their_runs(tab, runs_root):
    trials = read_jsonl(runs_root / "sweep" / "trials.jsonl")
    page = tab.open("/sweeps/sweep")
    page.wait_for_selector("#trials-table tbody tr")
    numbers = page.locator("#trials-table tbody tr").evaluate_all("rows => rows.map(r => Number(r.dataset.trial))")
    assert sorted(numbers) == sorted(t["number"] for t in trials)
    assert page.locator("#history-chart .main-svg").count() > 0   # Plotly drew it
    for trial in trials:   # each trial's run page, with its weights kept or not
        page = tab.open("/sweeps/sweep")
        page.locator("#trials-table a", has_text=trial["run"]).click()
        page.wait_for_url(f"**/runs/sweep/{trial['run']}")
        page.wait_for_selector("#metrics-table tbody tr")
    assert tab.errors == []


def test_try_it_answers_what_ftune_predict_prints(tab, runs_root):
    text = "a great happy story"
    printed = invoke("predict", runs_root / "classify-b", "--text", text)
    assert printed.exit_code == 0, printed
    expected = json.loads(printed.stdout.strip().splitlines()[-1])

    page = tab.open("/runs/classify-b")
    page.locator("#try-load").click()   # the board loads the model
    page.wait_for_selector("#try-form textarea[name=text]", timeout=180 * MS)
    page.locator("#try-form textarea[name=text]").fill(text)
    page.locator("#try-form button[type=submit]").click()
    answer = page.locator("#try-answer")
    answer.wait_for()
    shown = json.loads(answer.inner_text())
    assert shown.keys() == expected.keys()
    assert shown["label"] == expected["label"]
    assert shown["score"] == pytest.approx(expected["score"], abs=1e-6)
    tab.shot("run-classify-try")
    assert tab.errors == []


def test_a_run_deleted_while_its_page_is_open_says_so(tab, board, runs_root):
    doomed = runs_root / "doomed"
    shutil.copytree(runs_root / "classify-a", doomed)
    page = tab.open("/runs/doomed")
    page.wait_for_selector("#metrics-table tbody tr")
    shutil.rmtree(doomed)
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")   # the user comes back to the tab
    page.wait_for_selector("#page-error:not([hidden])")
    message = board.api("/api/runs/doomed").json()["error"]["message"]
    assert message in page.locator("#page-error").inner_text()
    assert page.locator("#run-content").is_hidden()
    tab.shot("run-deleted")
    # The page's request for the gone run answered 404: the browser logs that one failed load, nothing else.
    assert all("404" in error for error in tab.errors), tab.errors
