// The Compare page: run A against run B (GET /api/compare): metrics side by side and, where both scored the same
// rows, the counts of rows B fixed and broke and the rows themselves (GET /api/compare/rows). Further ticked runs
// (?run=ID) are offered as A or B and shown in the metrics table.
"use strict";

(() => {
  const {el, fill, api, idPath, query, number, metricName} = board;
  const LIMIT = 50;
  const params = new URLSearchParams(window.location.search);
  const a = params.get("a") || "";
  const b = params.get("b") || "";
  const others = params.getAll("run");
  const ids = [...new Set([a, b, ...others].filter(Boolean))];
  const TITLES = {fixed: "Rows A got wrong and B right", broken: "Rows A got right and B wrong",
                  both_right: "Rows both got right", both_wrong: "Rows both got wrong"};
  let which = null;
  let offset = 0;

  function address(newA, newB) {
    const next = new URLSearchParams({a: newA, b: newB});
    for (const id of ids) if (id !== newA && id !== newB) next.append("run", id);
    return `/compare?${next}`;
  }

  function pickers() {
    for (const [name, current] of [["a", a], ["b", b]]) {
      const select = document.getElementById(`pick-${name}`);
      fill(select, ids.map((id) => el("option", {value: id, selected: id === current}, id)));
      select.onchange = () => {
        const [newA, newB] = name === "a" ? [select.value, b] : [a, select.value];
        window.location.href = address(newA, newB);
      };
    }
    document.getElementById("swap").onclick = () => { window.location.href = address(b, a); };
  }

  function runLink(run) {
    return el("a", {href: `/runs/${idPath(run.id)}`}, run.name);
  }

  // Metrics of A and B from the comparison; further runs' from /api/runs.
  function showMetrics(data, more) {
    const runs = [data.a, data.b, ...more];
    const names = Object.keys(data.metrics).sort();
    const mainName = data.a.main_metric && data.a.main_metric.name;
    fill(document.getElementById("cmp-metrics"),
      el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "metric"),
         runs.map((run, i) => el("th", {scope: "col", class: "num"}, i < 2 ? `${"AB"[i]}: ` : "", runLink(run))),
         el("th", {scope: "col", class: "num"}, "B − A"))),
      el("tbody", {}, names.map((name) => {
        const [x, y] = data.metrics[name];
        const delta = typeof x === "number" && typeof y === "number" ? y - x : null;
        return el("tr", {class: name === mainName ? "main-metric" : ""}, el("th", {scope: "row"}, metricName(name)),
          el("td", {class: "num"}, number(x)), el("td", {class: "num"}, number(y)),
          more.map((run) => el("td", {class: "num"}, number((run.metrics || {})[name]))),
          el("td", {class: "num delta"}, delta === null ? "–" : `${delta > 0 ? "+" : ""}${number(delta)}`));
      })));
  }

  function showCounts(counts) {
    for (const [name, value] of Object.entries(counts)) {
      const node = document.getElementById(`count-${name}`);
      if (node) fill(node, number(value));
    }
  }

  async function showRows() {
    const section = document.getElementById("diff-rows");
    section.hidden = !which;
    for (const button of document.querySelectorAll(".count[data-which]")) {
      button.setAttribute("aria-pressed", button.dataset.which === which ? "true" : "false");
    }
    if (!which) return;
    fill(document.getElementById("diff-title"), TITLES[which]);
    let data;
    try {
      data = await api(`/api/compare/rows${query({a, b, which, offset, limit: LIMIT})}`);
    } catch (exc) {
      board.showError(exc.message);
      return;
    }
    fill(document.querySelector("#diff-table thead"), el("tr", {},
      ["id", "text", "reference", "A predicted", "B predicted"].map((h) => el("th", {scope: "col"}, h))));
    fill(document.querySelector("#diff-table tbody"), data.rows.map((row) => el("tr", {"data-id": String(row.id)},
      el("td", {class: "mono id-cell"}, String(row.id)),
      el("td", {class: "text-cell"}, textOf(row)),
      el("td", {}, chip(row.reference)),
      el("td", {}, chip(row.a_prediction, which === "fixed" || which === "both_wrong")),
      el("td", {}, chip(row.b_prediction, which === "broken" || which === "both_wrong")))));
    const last = offset + data.rows.length;
    fill(document.getElementById("page-info"), data.total ? `${offset + 1}–${last} of ${data.total}` : "no rows");
    document.getElementById("prev-page").disabled = offset === 0;
    document.getElementById("next-page").disabled = last >= data.total;
  }

  function textOf(row) {
    if (!row.text) return el("span", {class: "muted"}, "text unavailable");
    return Object.entries(row.text).map(([name, value]) => el("div", {class: "row-text"},
      Object.keys(row.text).length > 1 ? el("span", {class: "field-name"}, name) : null, String(value)));
  }

  function chip(value, wrong) {
    const text = Array.isArray(value) ? value.join(" | ") || "(none)" : value === null || value === undefined ? "–" : String(value);
    return el("span", {class: `chip${wrong ? " wrong" : ""}`}, text);
  }

  async function start() {
    pickers();
    if (!a || !b) {
      board.showError("Choose two runs: tick them on the Runs page, or open /compare?a=RUN&b=RUN.");
      return;
    }
    let data;
    let more = [];
    try {
      data = await api(`/api/compare${query({a, b})}`);
      if (others.length) {
        const all = await api("/api/runs");
        more = all.runs.filter((run) => others.includes(run.id) && run.id !== a && run.id !== b);
      }
    } catch (exc) {
      board.showError(exc.message);
      return;
    }
    fill(document.getElementById("compare-title"), el("span", {}, "A ", runLink(data.a)),
         el("span", {}, "B ", runLink(data.b)));
    document.title = `Compare ${data.a.name} and ${data.b.name} · ftune board`;
    const notice = document.getElementById("splits-differ");
    notice.hidden = data.same_rows;
    if (!data.same_rows) {
      fill(notice, el("strong", {}, "The splits differ: "),
           data.why || "the two runs were not scored on the same rows; only their metrics compare");
    }
    document.getElementById("counts-card").hidden = !data.same_rows || !data.counts;
    if (data.counts) showCounts(data.counts);
    showMetrics(data, more);
    document.getElementById("compare-content").hidden = false;
  }

  for (const button of document.querySelectorAll(".count[data-which]")) {
    button.addEventListener("click", () => {
      which = which === button.dataset.which ? null : button.dataset.which;
      offset = 0;
      showRows();
    });
  }
  document.getElementById("prev-page").addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); showRows(); });
  document.getElementById("next-page").addEventListener("click", () => { offset += LIMIT; showRows(); });
  start();
})();
