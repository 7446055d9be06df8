// The Runs page: the table of GET /api/runs, sorted and filtered here, re-read every few seconds so new and
// finishing runs appear; ticked runs open the Compare page.
"use strict";

(() => {
  const {el, fill, api, idPath, number, duration, when, status, shortName, metricName} = board;
  const POLL_MS = 5000;
  const table = document.getElementById("runs-table");
  const filterText = document.getElementById("filter-text");
  const filterTask = document.getElementById("filter-task");
  const filterStatus = document.getElementById("filter-status");
  const compareButton = document.getElementById("compare-button");
  const state = {sort: "created", order: "desc", runs: [], ticked: [], seen: null};

  const sortValue = {
    metric: (run) => (run.main_metric ? run.main_metric.value : null),
    name: (run) => run.name, task: (run) => run.task, model: (run) => shortName(run.model),
    method: (run) => run.method, data: (run) => shortName(run.data), status: (run) => run.status,
    train_time_s: (run) => run.train_time_s, created: (run) => run.created,
  };

  const markSorted = board.sortableHeader(table, state, render);

  function compare(a, b) {
    const x = sortValue[state.sort](a);
    const y = sortValue[state.sort](b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;   // missing values last, either way
    if (y === null || y === undefined) return -1;
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return state.order === "asc" ? order : -order;
  }

  function matches(run) {
    const text = filterText.value.trim().toLowerCase();
    if (filterTask.value && run.task !== filterTask.value) return false;
    if (filterStatus.value && run.status !== filterStatus.value) return false;
    if (!text) return true;
    return [run.id, run.name, run.task, run.model, run.method, run.data, run.status]
      .some((value) => value && String(value).toLowerCase().includes(text));
  }

  function metricCell(run) {
    if (!run.main_metric) return el("td", {class: "num muted"}, "–");
    const {name, value, greater_is_better: higher} = run.main_metric;
    return el("td", {class: "num", title: `${name} (${higher ? "higher" : "lower"} is better)`},
              el("span", {class: "metric-name"}, metricName(name)), " ", el("strong", {}, number(value)));
  }

  function row(run) {
    const ticked = state.ticked.includes(run.id);
    const box = el("input", {type: "checkbox", checked: ticked, "aria-label": `Compare ${run.name}`,
                             "data-run-id": run.id, onchange: () => tick(run.id, box.checked)});
    return el("tr", {class: ticked ? "selected" : ""},
      el("td", {}, box),
      el("td", {}, el("a", {href: `/runs/${idPath(run.id)}`, class: "run-link"}, run.name),
         run.sweep ? el("div", {class: "small muted"}, "trial of ",
                        el("a", {href: `/sweeps/${idPath(run.sweep)}`}, run.sweep)) : null,
         el("div", {class: "small muted mono"}, run.id !== run.name ? run.id : null)),
      el("td", {}, el("span", {class: "task"}, run.task || "–")),
      el("td", {title: run.model || ""}, shortName(run.model)),
      el("td", {}, run.method === "lora" ? "LoRA" : (run.method || "–")),
      el("td", {title: run.data || ""}, shortName(run.data)),
      metricCell(run),
      el("td", {class: "num"}, duration(run.train_time_s)),
      el("td", {}, status(run.status)),
      el("td", {class: "nowrap"}, when(run.created)));
  }

  function tick(id, on) {
    state.ticked = on ? [...state.ticked.filter((t) => t !== id), id] : state.ticked.filter((t) => t !== id);
    render();
  }

  function options(select, values) {
    const current = select.value;
    fill(select, el("option", {value: ""}, "all"), [...new Set(values)].filter(Boolean).sort()
      .map((value) => el("option", {value, selected: value === current}, value)));
  }

  function render() {
    const runs = state.runs.filter(matches).sort(compare);
    fill(table.tBodies[0], runs.map(row));
    document.getElementById("no-match").hidden = runs.length > 0 || state.runs.length === 0;
    markSorted();
    const known = new Set(state.runs.map((run) => run.id));
    state.ticked = state.ticked.filter((id) => known.has(id));
    compareButton.disabled = state.ticked.length < 2;
    compareButton.textContent = state.ticked.length >= 2 ? `Compare ${state.ticked.length} runs` : "Compare";
  }

  function show(data) {
    const empty = data.runs.length === 0 && data.sweeps.length === 0;
    fill(document.getElementById("empty-folders"), data.folders.join(", "));
    fill(document.getElementById("first-command"),
         `ftune classify --data reviews.csv --output-dir ${data.folders[0].replace(/\/+$/, "")}/reviews`);
    document.getElementById("empty-state").hidden = !empty;
    document.getElementById("runs-section").hidden = data.runs.length === 0;
    const counts = [`${data.runs.length} run${data.runs.length === 1 ? "" : "s"}`];
    if (data.sweeps.length) counts.push(`${data.sweeps.length} sweep${data.sweeps.length === 1 ? "" : "s"}`);
    if (data.broken.length) counts.push(`${data.broken.length} broken`);
    fill(document.getElementById("runs-summary"), `${counts.join(" · ")} under ${data.folders.join(", ")}`);

    state.runs = data.runs;
    options(filterTask, data.runs.map((run) => run.task));
    options(filterStatus, data.runs.map((run) => run.status));
    render();

    document.getElementById("sweeps-section").hidden = data.sweeps.length === 0;
    fill(document.getElementById("sweeps-list"), data.sweeps.map((sweep) => el("li", {},
      el("a", {href: `/sweeps/${idPath(sweep.id)}`}, sweep.name || sweep.id),
      el("span", {class: "muted"}, sweepFacts(sweep)))));

    document.getElementById("broken-section").hidden = data.broken.length === 0;
    fill(document.getElementById("broken-list"), data.broken.map((broken) => el("li", {},
      el("span", {class: "mono"}, broken.path || broken.id), el("span", {class: "why"}, broken.why))));
  }

  function sweepFacts(sweep) {
    const facts = [];
    if (sweep.task) facts.push(sweep.task);
    if (sweep.trials !== undefined) facts.push(`${sweep.trials} trials`);
    if (sweep.metric) facts.push(metricName(sweep.metric));
    if (sweep.best_value !== undefined && sweep.best_value !== null) facts.push(`best ${number(sweep.best_value)}`);
    return facts.length ? ` — ${facts.join(" · ")}` : "";
  }

  async function refresh() {
    try {
      const data = await api("/api/runs");
      const seen = JSON.stringify(data);
      if (seen !== state.seen) show(data);   // unchanged: the table (and the focus in it) stays as it is
      state.seen = seen;
      board.showError(null);
    } catch (exc) {
      board.showError(exc.message);
    }
  }

  for (const input of [filterText, filterTask, filterStatus]) input.addEventListener("input", render);
  compareButton.addEventListener("click", () => {
    const [a, b, ...more] = state.ticked;
    const params = new URLSearchParams({a, b});
    for (const id of more) params.append("run", id);
    window.location.href = `/compare?${params}`;
  });
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
})();
