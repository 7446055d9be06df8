// The Errors page: the held-out rows of GET /api/runs/{id}/rows, filtered, sorted and paged by the server. The
// filters live in the page's address (shareable; the run page links a confusion cell here), and each task's rows
// are drawn their own way: ner sentences with gold and predicted entities, qa contexts with gold and predicted
// spans, source/reference/output side by side for summarize and translate.
"use strict";

(() => {
  const {el, fill, api, idPath, query, number} = board;
  const LIMIT = 50;
  const runId = board.main.dataset.runId;
  const base = `/api/runs/${idPath(runId)}`;
  const form = document.getElementById("filters");
  const FILTERS = ["wrong", "reference", "prediction", "q", "min_length", "max_length", "sort", "order"];
  // Wrong rows in the held-out order (sort=id: the order of eval_predictions.jsonl); where a row's own figure says
  // how bad it is, the worst first: lm the highest loss, summarize and translate the lowest ROUGE-L or chrF.
  const DEFAULTS = {wrong: "true", sort: "id", order: "asc"};
  const TASK_DEFAULTS = {lm: {sort: "loss", order: "desc"}, summarize: {sort: "score", order: "asc"},
                         translate: {sort: "score", order: "asc"}};
  let defaults = DEFAULTS;
  const params = new URLSearchParams(window.location.search);
  const evalName = params.get("eval") || "";
  let offset = parseInt(params.get("offset") || "0", 10) || 0;
  let matrix = null;
  let sortable = null;
  let requestNumber = 0;

  // ---- filters <-> the address ---------------------------------------------------------------------------
  function readForm() {
    const data = new FormData(form);
    const chosen = {};
    for (const name of FILTERS) chosen[name] = (data.get(name) || "").trim();
    return chosen;
  }

  function writeForm(values) {
    for (const name of FILTERS) {
      if (!(name in values)) continue;
      if (name === "wrong") {
        for (const radio of form.elements.wrong) radio.checked = radio.value === values.wrong;
      } else {
        const field = form.elements[name];
        if (field.tagName === "SELECT" && values[name] && ![...field.options].some((o) => o.value === values[name])) {
          field.append(el("option", {value: values[name]}, values[name]));
        }
        field.value = values[name];
      }
    }
  }

  function initialFilters() {
    const values = {...defaults};
    for (const name of FILTERS) if (params.has(name)) values[name] = params.get(name);
    if (values.wrong === "all") values.wrong = "";
    return values;
  }

  function apiFilters() {
    return {eval: evalName, ...readForm()};
  }

  function remember(filters) {
    const shown = {...filters, wrong: filters.wrong === "" ? "all" : filters.wrong, offset: offset || ""};
    history.replaceState(null, "", `${window.location.pathname}${query(shown)}`);
  }

  // ---- marks inside text -----------------------------------------------------------------------------------
  // Text with character spans marked: each span {start, end, cls}; overlapping spans give a segment both classes.
  function marked(text, spans) {
    const cuts = new Set([0, text.length]);
    for (const span of spans) { cuts.add(Math.max(0, Math.min(text.length, span.start)));
                                cuts.add(Math.max(0, Math.min(text.length, span.end))); }
    const points = [...cuts].sort((a, b) => a - b);
    const parts = [];
    for (let i = 0; i + 1 < points.length; i += 1) {
      const [from, to] = [points[i], points[i + 1]];
      const classes = spans.filter((s) => s.start <= from && s.end >= to && s.end > s.start).map((s) => s.cls);
      const piece = text.slice(from, to);
      parts.push(classes.length ? el("mark", {class: [...new Set(classes)].join(" ")}, piece) : piece);
    }
    return parts;
  }

  function entityKey(entity) { return `${entity.type}:${entity.start}:${entity.end}`; }

  // A ner sentence with its entities marked; those not in `other` (missed or wrong) are flagged.
  function sentence(tokens, entities, other, cls) {
    const otherKeys = new Set((other || []).map(entityKey));
    const starts = new Map((entities || []).map((entity) => [entity.start, entity]));
    const out = [];
    for (let i = 0; i < tokens.length;) {
      const entity = starts.get(i);
      if (entity && entity.end > i) {
        const wrong = !otherKeys.has(entityKey(entity));
        out.push(el("mark", {class: `entity ${cls}${wrong ? " differs" : ""}`,
                             title: `${entity.type}${wrong ? (cls === "gold" ? " (missed)" : " (not in gold)") : ""}`},
                    tokens.slice(i, entity.end).join(" "), el("sub", {class: "entity-type"}, entity.type)), " ");
        i = entity.end;
      } else {
        out.push(tokens[i], " ");
        i += 1;
      }
    }
    return out;
  }

  function textFields(row) {
    if (!row.text) return el("span", {class: "muted"}, `text unavailable${row.text_missing ? `: ${row.text_missing}` : ""}`);
    const entries = Object.entries(row.text);
    if (entries.length === 1) return el("div", {class: "row-text"}, String(entries[0][1]));
    return entries.map(([name, value]) => el("div", {class: "row-text"}, el("span", {class: "field-name"}, name),
                                             String(value)));
  }

  function label(value, wrong) {
    if (value === null || value === undefined) return el("span", {class: "muted"}, "–");
    const text = Array.isArray(value) ? value.join(" | ") || "(none)" : String(value) || "(empty)";
    return el("span", {class: `chip${wrong ? " wrong" : ""}`}, text);
  }

  function idCell(row) {
    return el("td", {class: "mono id-cell", "data-id": String(row.id)}, String(row.id),
              row.wrong ? el("span", {class: "badge bad small"}, "wrong") : el("span", {class: "badge ok small"}, "right"));
  }

  function scoreCell(value) { return el("td", {class: "num"}, value === null || value === undefined ? "–" : number(value)); }

  // Per task: the table's head and each row's cells.
  const VIEWS = {
    classify: {
      head: ["id", "text", "reference", "prediction", "confidence", "length"],
      cells: (row) => [idCell(row), el("td", {class: "text-cell"}, textFields(row)), el("td", {}, label(row.reference)),
                       el("td", {}, label(row.prediction, row.wrong)), scoreCell(row.score), scoreCell(row.length)],
    },
    ner: {
      head: ["id", "sentence: gold / predicted entities", "confidence", "length"],
      legend: [["entity gold", "gold entity"], ["entity predicted", "predicted entity"],
               ["entity predicted differs", "differs from the other side"]],
      cells: (row) => [idCell(row), el("td", {class: "text-cell"},
        el("div", {class: "sentence"}, el("span", {class: "side"}, "gold"),
           sentence(row.tokens || [], row.gold_entities, row.predicted_entities, "gold")),
        el("div", {class: "sentence"}, el("span", {class: "side"}, "pred"),
           sentence(row.tokens || [], row.predicted_entities, row.gold_entities, "predicted"))),
        scoreCell(row.score), scoreCell(row.length)],
    },
    qa: {
      head: ["id", "question and context", "gold answers", "predicted", "confidence"],
      legend: [["gold", "gold answer"], ["predicted", "predicted span"], ["gold predicted", "both"]],
      cells: (row) => {
        const spans = [...(row.gold_spans || []).map((s) => ({...s, cls: "gold"})),
                       ...(row.predicted_span ? [].concat(row.predicted_span) : []).map((s) => ({...s, cls: "predicted"}))];
        return [idCell(row), el("td", {class: "text-cell"},
          el("div", {class: "question"}, row.question || ""),
          el("div", {class: "context"}, row.context !== undefined && row.context !== null
            ? marked(row.context, spans) : textFields(row))),
          el("td", {}, label(row.reference)), el("td", {}, label(row.prediction, row.wrong)), scoreCell(row.score)];
      },
    },
    seq2seq: {
      head: ["id", "source", "reference", "output", "row score"],
      cells: (row) => [idCell(row), el("td", {class: "text-cell"}, row.source ?? textFields(row)),
        el("td", {class: "text-cell"}, String(row.reference ?? "")),
        el("td", {class: `text-cell${row.wrong ? " wrong-text" : ""}`}, String(row.output ?? row.prediction ?? "")),
        el("td", {class: "num"}, row.row_score ? [el("div", {class: "small muted"}, row.row_score.name),
                                                   number(row.row_score.value)] : "–")],
    },
    lm: {
      head: ["id", "text", "loss", "tokens"],
      cells: (row) => [idCell(row), el("td", {class: "text-cell"}, textFields(row)), scoreCell(row.loss),
                       scoreCell(Array.isArray(row.tokens) ? row.tokens.length : row.tokens)],
    },
    dpo: {
      head: ["id", "prompt, chosen and rejected", "margin", "loss"],
      cells: (row) => [idCell(row), el("td", {class: "text-cell"}, textFields(row)), scoreCell(row.margin),
                       scoreCell(row.loss)],
    },
  };
  VIEWS.summarize = VIEWS.seq2seq;
  VIEWS.translate = VIEWS.seq2seq;

  function view(task) { return VIEWS[task] || VIEWS.classify; }

  function showLegend(task) {
    const legend = document.getElementById("legend");
    const entries = view(task).legend;
    legend.hidden = !entries;
    if (entries) fill(legend, entries.map(([cls, text]) => el("span", {class: "legend-item"},
                                                                   el("mark", {class: cls}, "abc"), text)));
  }

  // ---- the confusion matrix --------------------------------------------------------------------------------
  function showMatrix() {
    const section = document.getElementById("matrix-section");
    section.hidden = !matrix;
    if (!matrix) return;
    const chosen = readForm();
    const selected = chosen.reference && chosen.prediction ? [chosen.reference, chosen.prediction] : null;
    fill(document.getElementById("matrix"), board.confusionMatrix(matrix, (reference, prediction) => {
      writeForm({reference, prediction, wrong: ""});
      offset = 0;
      load();
    }, selected));
  }

  // ---- loading ---------------------------------------------------------------------------------------------
  async function load() {
    const filters = apiFilters();
    const number_ = ++requestNumber;
    remember(filters);
    showMatrix();
    const started = performance.now();
    let data;
    try {
      data = await api(`${base}/rows${query({...filters, offset, limit: LIMIT})}`);
    } catch (exc) {
      if (number_ !== requestNumber) return;
      board.showError(exc.message);
      fill(document.querySelector("#rows-table tbody"));
      return;
    }
    if (number_ !== requestNumber) return;   // a later request is on its way
    board.showError(null);
    const elapsed = performance.now() - started;
    board.main.dataset.lastLoadMs = elapsed.toFixed(0);
    showRows(data, elapsed);
  }

  function showRows(data, elapsed) {
    fill(document.getElementById("wrong-means"), data.wrong_means || "");
    showSortable(data.sortable || []);
    showLegend(data.task);
    const shape = view(data.task);
    fill(document.querySelector("#rows-table thead"),
         el("tr", {}, shape.head.map((h) => el("th", {scope: "col"}, h))));
    fill(document.querySelector("#rows-table tbody"),
         data.rows.map((row) => el("tr", {class: row.wrong ? "wrong-row" : "", "data-id": String(row.id)},
                                   shape.cells(row))));
    document.getElementById("no-rows").hidden = data.rows.length > 0;
    const first = data.total ? data.offset + 1 : 0;
    const last = data.offset + data.rows.length;
    fill(document.getElementById("rows-summary"),
         `${data.total.toLocaleString("en")} row${data.total === 1 ? "" : "s"} match`,
         el("span", {class: "small"}, ` · ${elapsed.toFixed(0)} ms`));
    board.main.dataset.total = String(data.total);
    fill(document.getElementById("page-info"), data.total ? `${first}–${last} of ${data.total.toLocaleString("en")}` : "");
    document.getElementById("prev-page").disabled = data.offset === 0;
    document.getElementById("next-page").disabled = last >= data.total;
    board.main.dataset.loaded = "true";
  }

  const SORT_NAMES = {id: "held-out order", confidence: "confidence", loss: "loss", score: "row score", length: "length"};

  function showSortable(names) {
    const key = names.join(",");
    if (key === sortable) return;
    sortable = key;
    const select = form.elements.sort;
    const current = select.value || "id";
    fill(select, names.map((name) => el("option", {value: name, selected: name === current}, SORT_NAMES[name] || name)));
    document.getElementById("confident-wrong").hidden = !names.includes("confidence");
  }

  async function start() {
    fill(document.getElementById("crumb-run"), runId);
    document.getElementById("crumb-run").href = `/runs/${idPath(runId)}${query({eval: evalName})}`;
    try {
      const data = await api(`${base}${query({eval: evalName})}`);
      fill(document.getElementById("run-name"), `· ${data.run.name}${evalName ? ` · evaluation ${evalName}` : ""}`);
      document.title = `Errors · ${data.run.name} · ftune board`;
      defaults = {...DEFAULTS, ...(TASK_DEFAULTS[data.run.task] || {})};
      writeForm(initialFilters());
      const details = data.details || {};
      matrix = details.confusion_matrix || null;
      // classify: the labels; ner: the entity types (a sentence with a gold or predicted entity of that type).
      const labels = matrix ? matrix.labels : Object.keys(details.per_class || details.per_type || {});
      const kind = details.per_type && !matrix ? " entity type" : "";
      for (const name of ["reference", "prediction"]) {
        const select = form.elements[name];
        select.parentElement.firstChild.textContent = `${name === "reference" ? "Reference" : "Prediction"}${kind} `;
        const current = select.value;
        fill(select, el("option", {value: ""}, "any"),
             labels.map((l) => el("option", {value: l, selected: l === current}, l)));
        document.getElementById(`${name}-choice`).hidden = labels.length === 0;
      }
    } catch (exc) {
      writeForm(initialFilters());
      board.showError(exc.message);
      return;
    }
    load();
  }

  let typing = null;
  form.addEventListener("input", (event) => {
    offset = 0;
    clearTimeout(typing);
    typing = setTimeout(load, event.target.type === "search" || event.target.type === "number" ? 250 : 0);
  });
  form.addEventListener("reset", () => setTimeout(() => { writeForm(defaults); offset = 0; load(); }));
  document.getElementById("prev-page").addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); load(); });
  document.getElementById("next-page").addEventListener("click", () => { offset += LIMIT; load(); });
  document.getElementById("confident-wrong").addEventListener("click", () => {
    writeForm({wrong: "true", sort: "confidence", order: "desc", reference: "", prediction: ""});
    offset = 0;
    load();
  });
  board.refreshOnReturn(load);
  start();
})();
