"""`ftune board`'s pages without a browser (the default run; tests/test_board_browser.py drives them in Chromium):
every page renders from its template with what it names escaped, every script and stylesheet a page loads is
served, and plotly.js comes from the installed plotly package (no CDN)."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

pytest.importorskip("fastapi", reason="ftune board needs the serve extra")
pytest.importorskip("jinja2", reason="ftune board needs the serve extra")

from fastapi.testclient import TestClient  # noqa: E402

from ftune.board.server import create_app  # noqa: E402

HOSTILE = '<script>alert("id")</script>'
PAGES = ["/", f"/runs/{HOSTILE}", f"/runs/x/{HOSTILE}/errors", f"/compare?a={HOSTILE}&b=y", f"/sweeps/{HOSTILE}"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(create_app([tmp_path_factory.mktemp("runs")])) as test_client:
        yield test_client


@pytest.mark.parametrize("path", PAGES)
def test_each_page_renders_with_what_it_names_escaped(client, path):
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert HOSTILE not in response.text               # a run id is a folder name: any text at all
    page = re.search(r'data-page="(\w+)"', response.text).group(1)
    assert f'src="/static/{page}.js"' in response.text


def test_every_script_and_stylesheet_a_page_loads_is_served(client):
    loaded = set()
    for path in PAGES:
        loaded |= set(re.findall(r'(?:src|href)="(/static/[^"]+)"', client.get(path).text))
    assert {"/static/board.js", "/static/board.css", "/static/plotly.min.js"} <= loaded
    for url in sorted(loaded):
        response = client.get(url)
        assert response.status_code == 200 and response.content, url


def test_plotly_js_is_the_installed_packages_own(client):
    response = client.get("/static/plotly.min.js")
    assert "javascript" in response.headers["content-type"]
    assert response.content == (files("plotly") / "package_data" / "plotly.min.js").read_bytes()
