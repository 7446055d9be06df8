"""ftune board's pages: the HTML of each page, rendered from a Jinja template, and plotly.js from the installed
`plotly` package (no CDN: the pages work offline).

A page is a shell: the template names what the page shows (a run's id, the two runs compared) and the page's script
in `static/` fetches the data from the JSON endpoints (`ftune.board.api`), so the pages show exactly what the API
answers, and the tests can call the same endpoints. Text read from runs and data reaches the page only as text
(Jinja's autoescape here, `textContent` in the scripts).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from fastapi.templating import Jinja2Templates

router = APIRouter()
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# A week: the file changes only when the plotly package does.
PLOTLY_CACHE = "public, max-age=604800"


def render(request: Request, template: str, title: str, **context):
    """The page `template` with what every page shows: its title, its name (the template's, which names its script)
    and the folders the board reads."""
    folders = [str(folder) for folder in request.app.state.board.folders]
    page = template.removesuffix(".html")
    return templates.TemplateResponse(request, template, {"title": title, "page": page, "folders": folders,
                                                          **context})


@router.get("/")
def runs_page(request: Request):
    return render(request, "runs.html", "Runs")


# Registered before the run page: `{run_id:path}` would also match "ID/errors".
@router.get("/runs/{run_id:path}/errors")
def errors_page(request: Request, run_id: str):
    return render(request, "errors.html", f"Errors · {run_id}", run_id=run_id)


@router.get("/runs/{run_id:path}")
def run_page(request: Request, run_id: str):
    return render(request, "run.html", run_id, run_id=run_id)


@router.get("/compare")
def compare_page(request: Request):
    return render(request, "compare.html", "Compare")


@router.get("/sweeps/{sweep_id:path}")
def sweep_page(request: Request, sweep_id: str):
    return render(request, "sweep.html", f"Sweep · {sweep_id}", sweep_id=sweep_id)


@router.get("/static/plotly.min.js")
def plotly_js():
    """plotly.js as the installed plotly package ships it."""
    path = files("plotly") / "package_data" / "plotly.min.js"
    return FileResponse(str(path), media_type="text/javascript", headers={"Cache-Control": PLOTLY_CACHE})
