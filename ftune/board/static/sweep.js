// A sweep's page: GET /api/sweeps/{id} as the optimisation history, each parameter against the metric (Plotly;
// a point opens its trial's run) and the trials table.
"use strict";

(() => {
  const {el, fill, api, idPath, number, duration, metricName} = board;
  const sweepId = board.main.dataset.sweepId;

  function openTrial(event) {
    const runId = event.points && event.points[0] && event.points[0].customdata;
    if (runId) window.location.href = `/runs/${idPath(runId)}`;
  }

  function hover(data) {
    return `trial %{text}<br>${metricName(data.metric)}: %{y:.4g}<extra></extra>`;
  }

  function history(data, done) {
    const better = data.direction === "minimize" ? Math.min : Math.max;
    let best = null;
    const bestSoFar = done.map((t) => (best = best === null ? t.value : better(best, t.value)));
    const node = document.getElementById("history-chart");
    board.plot(node, [
      {type: "scatter", mode: "markers", name: "trial", x: done.map((t) => t.number), y: done.map((t) => t.value),
       text: done.map((t) => String(t.number)), customdata: done.map((t) => t.run_id), marker: {size: 9},
       hovertemplate: hover(data)},
      {type: "scatter", mode: "lines", name: "best so far", x: done.map((t) => t.number), y: bestSoFar,
       line: {shape: "hv", width: 2}, hovertemplate: `best so far: %{y:.4g}<extra></extra>`},
    ], {xaxis: {title: {text: "trial"}, dtick: done.length <= 20 ? 1 : undefined},
        yaxis: {title: {text: metricName(data.metric)}}, height: 320});
    node.on("plotly_click", openTrial);
  }

  // Log axis for a parameter whose values span more than two orders of magnitude (a learning rate).
  function axisType(values) {
    const numbers = values.filter((v) => typeof v === "number");
    if (numbers.length !== values.length) return "category";
    const positive = numbers.filter((v) => v > 0);
    return positive.length === numbers.length && Math.max(...numbers) / Math.min(...numbers) > 100 ? "log" : "linear";
  }

  function paramCharts(data, done) {
    const container = document.getElementById("param-charts");
    fill(container, data.params.map((name) => el("div", {class: "chart param-chart", role: "img",
                                                         "aria-label": `${name} against ${metricName(data.metric)}`})));
    data.params.forEach((name, i) => {
      const node = container.children[i];
      const values = done.map((t) => t.params[name]);
      board.plot(node, [{type: "scatter", mode: "markers", x: values, y: done.map((t) => t.value),
                         text: done.map((t) => String(t.number)), customdata: done.map((t) => t.run_id),
                         marker: {size: 9, color: done.map((t) => t.number), colorscale: "Blues", showscale: false,
                                  line: {width: 1, color: "#1e3a8a"}},
                         hovertemplate: `trial %{text}<br>${name}: %{x}<br>${metricName(data.metric)}: %{y:.4g}<extra></extra>`}],
                 {xaxis: {type: axisType(values), title: {text: name}},
                  yaxis: {title: {text: metricName(data.metric)}}, showlegend: false, height: 260,
                  margin: {t: 16, b: 44}});
      node.on("plotly_click", openTrial);
    });
  }

  function trialsTable(data) {
    const bestNumber = data.best ? data.best.number : null;
    fill(document.getElementById("trials-table"),
      el("thead", {}, el("tr", {}, el("th", {scope: "col", class: "num"}, "trial"), el("th", {scope: "col"}, "state"),
         el("th", {scope: "col", class: "num"}, metricName(data.metric)),
         data.params.map((p) => el("th", {scope: "col", class: "num"}, p)),
         el("th", {scope: "col", class: "num"}, "duration"), el("th", {scope: "col"}, "run"))),
      el("tbody", {}, data.trials.map((t) => el("tr", {class: t.number === bestNumber ? "best-row" : "",
                                                       "data-trial": String(t.number)},
        el("td", {class: "num"}, String(t.number), t.number === bestNumber ? el("span", {class: "badge ok small"}, "best") : null),
        el("td", {}, board.status(t.state === "COMPLETE" ? "complete" : String(t.state).toLowerCase())),
        el("td", {class: "num"}, number(t.value)),
        data.params.map((p) => el("td", {class: "num"}, number(t.params[p]))),
        el("td", {class: "num"}, duration(t.duration_s)),
        el("td", {}, t.run_id ? el("a", {href: `/runs/${idPath(t.run_id)}`}, t.run_id) : el("span", {class: "muted"}, "–"))))));
  }

  async function start() {
    let data;
    try {
      data = await api(`/api/sweeps/${idPath(sweepId)}`);
    } catch (exc) {
      board.showError(exc.message);
      return;
    }
    const sweep = data.sweep;
    fill(document.getElementById("sweep-name"), sweep.name || sweepId);
    document.title = `Sweep ${sweep.name || sweepId} · ftune board`;
    fill(document.getElementById("sweep-facts"),
      sweep.task ? el("span", {class: "task"}, sweep.task) : null,
      el("span", {}, `${data.trials.length} trials`),
      el("span", {}, `${data.direction === "minimize" ? "minimising" : "maximising"} `, el("strong", {}, metricName(data.metric))),
      el("span", {}, `parameters: ${data.params.join(", ")}`));
    const bestBox = document.getElementById("best");
    bestBox.hidden = !data.best;
    if (data.best) {
      fill(bestBox, el("strong", {}, `Best: trial ${data.best.number}`), ` · ${metricName(data.metric)} ${number(data.best.value)} · `,
           Object.entries(data.best.params).map(([k, v]) => `${k}=${number(v)}`).join(", "));
    }
    const done = data.trials.filter((t) => typeof t.value === "number").sort((x, y) => x.number - y.number);
    document.getElementById("sweep-content").hidden = false;
    history(data, done);
    paramCharts(data, done);
    trialsTable(data);
  }

  start();
})();
