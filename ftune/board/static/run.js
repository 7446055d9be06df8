// A run's page: GET /api/runs/{id} (?eval=NAME for one of its evaluations) drawn as metrics, per-class figures,
// the confusion matrix, learning curves, pictures, configuration and model card; "Try it" posts to
// /api/runs/{id}/try. A run still training is read again every few seconds.
"use strict";

(() => {
  const {el, fill, api, idPath, query, number, duration, when, status, shortName, metricName} = board;
  const POLL_MS = 5000;
  const GENERATES = ["lm", "dpo"];
  const runId = board.main.dataset.runId;
  const evalName = new URLSearchParams(window.location.search).get("eval") || "";
  const base = `/api/runs/${idPath(runId)}`;
  let tryReady = false;
  let pollTimer = null;

  function facts(run) {
    return [
      el("span", {class: "task"}, run.task || "–"),
      el("span", {}, "model ", el("strong", {title: run.model || ""}, shortName(run.model))),
      el("span", {}, run.method === "lora" ? "LoRA" : (run.method || "–")),
      el("span", {}, "data ", el("strong", {title: run.data || ""}, shortName(run.data))),
      el("span", {}, "trained in ", duration(run.train_time_s)),
      el("span", {}, when(run.created)),
      status(run.status),
      run.sweep ? el("span", {}, "trial of ", el("a", {href: `/sweeps/${idPath(run.sweep)}`}, run.sweep)) : null,
    ];
  }

  function showEvals(run) {
    const choice = document.getElementById("eval-choice");
    choice.hidden = !run.evals || run.evals.length === 0;
    if (choice.hidden) return;
    const select = document.getElementById("eval-select");
    fill(select, el("option", {value: ""}, "its held-out split"),
         run.evals.map((name) => el("option", {value: name, selected: name === evalName}, `evaluation ${name}`)));
    select.onchange = () => { window.location.search = query({eval: select.value}); };
  }

  function showMetrics(metrics, mainMetric) {
    const names = Object.keys(metrics).sort();
    fill(document.querySelector("#metrics-table tbody"), names.map((name) => el("tr",
      {class: mainMetric && mainMetric.name === name ? "main-metric" : ""},
      el("th", {scope: "row"}, metricName(name)), el("td", {class: "num"}, number(metrics[name])))));
    fill(document.getElementById("metrics-source"),
         evalName ? `Evaluation ${evalName} (RUN/evals/${evalName}/)` : "The held-out split recorded at training time.");
  }

  function showClasses(details) {
    const perClass = details.per_class || details.per_type;
    const card = document.getElementById("classes-card");
    card.hidden = !perClass;
    if (!perClass) return;
    fill(document.getElementById("classes-title"), details.per_class ? "Per class" : "Per entity type");
    const names = Object.keys(perClass);
    fill(document.getElementById("classes-table"),
      el("thead", {}, el("tr", {}, ["", "precision", "recall", "F1", "support"]
        .map((h, i) => el("th", {scope: "col", class: i ? "num" : ""}, h)))),
      el("tbody", {}, names.map((name) => el("tr", {}, el("th", {scope: "row"}, name),
        ["precision", "recall", "f1", "support"].map((key) => el("td", {class: "num"},
          key === "support" ? number(perClass[name][key]) : board.decimal(perClass[name][key])))))));
    board.plot(document.getElementById("classes-chart"), ["precision", "recall", "f1"].map((key) => ({
      type: "bar", name: key === "f1" ? "F1" : key, x: names, y: names.map((n) => perClass[n][key]),
      hovertemplate: `%{x}<br>${key}: %{y:.4f}<extra></extra>`,
    })), {barmode: "group", yaxis: {range: [0, 1.05], title: {text: ""}}, margin: {t: 10, b: 40}, height: 240});
  }

  function errorsUrl(extra) {
    return `/runs/${idPath(runId)}/errors${query({eval: evalName, ...extra})}`;
  }

  function showMatrix(details) {
    const card = document.getElementById("matrix-card");
    card.hidden = !details.confusion_matrix;
    if (card.hidden) return;
    fill(document.getElementById("matrix"), board.confusionMatrix(details.confusion_matrix, (reference, prediction) => {
      window.location.href = errorsUrl({reference, prediction, wrong: "all"});
    }, null));
  }

  // The epoch of a step, interpolated from the run's [step, epoch] pairs, for the curves' hover text.
  function epochAt(epochs, step) {
    if (!epochs || !epochs.length) return null;
    let previous = [0, 0];
    for (const pair of epochs) {
      if (pair[0] >= step) {
        const span = pair[0] - previous[0];
        return span > 0 ? previous[1] + (pair[1] - previous[1]) * (step - previous[0]) / span : pair[1];
      }
      previous = pair;
    }
    return previous[1];
  }

  function trace(name, points, epochs, dash) {
    return {
      type: "scatter", mode: points.length > 40 ? "lines" : "lines+markers", name: metricName(name),
      x: points.map((p) => p[0]), y: points.map((p) => p[1]),
      customdata: points.map((p) => epochAt(epochs, p[0])),
      line: {width: 2, dash: dash || "solid"}, marker: {size: 5},
      hovertemplate: `step %{x}<br>${metricName(name)}: %{y:.4g}` +
        (epochs && epochs.length ? "<br>epoch %{customdata:.2f}" : "") + "<extra></extra>",
    };
  }

  function showCurves(curves) {
    const train = (curves && curves.train) || {};
    const evals = (curves && curves.eval) || {};
    const epochs = curves && curves.epochs;
    // The training loss as logged every few steps (not train_loss, the run's mean written once at the end).
    const losses = [...(train.loss ? [trace("training loss", train.loss, epochs)] : []),
                    ...Object.entries(evals).filter(([n]) => /loss/.test(n))
                      .map(([n, p]) => trace(`held-out ${metricName(n)}`, p, epochs, "dot"))];
    const scores = Object.entries(evals).filter(([n]) => !/loss|runtime|per_second|samples|windows|total|words|tokens|blocks/.test(n))
      .map(([n, p]) => trace(n, p, epochs));
    const card = document.getElementById("curves-card");
    card.hidden = losses.length === 0 && scores.length === 0;
    if (card.hidden) return;
    const axes = {xaxis: {title: {text: "step"}}, hovermode: "closest", height: 320};
    const lossChart = document.getElementById("loss-chart");
    const metricChart = document.getElementById("metric-chart");
    lossChart.parentElement.hidden = losses.length === 0;
    metricChart.parentElement.hidden = scores.length === 0;
    if (losses.length) board.plot(lossChart, losses, axes);
    if (scores.length) board.plot(metricChart, scores, axes);
  }

  function showPictures(pictures) {
    const card = document.getElementById("pictures-card");
    card.hidden = !pictures || pictures.length === 0;
    if (card.hidden) return;
    fill(document.getElementById("pictures"), pictures.map((p) => el("figure", {},
      el("a", {href: p.url, target: "_blank", rel: "noopener"},
         el("img", {src: p.url, alt: p.caption || p.file, loading: "lazy"})),
      el("figcaption", {}, p.caption || p.file))));
  }

  function keyValues(tbody, pairs) {
    fill(tbody, pairs.map(([key, value]) => el("tr", {}, el("th", {scope: "row", class: "mono"}, key),
      el("td", {class: "mono"}, typeof value === "object" && value !== null ? JSON.stringify(value) : String(value)))));
  }

  // Nested mappings as dotted keys ("run.created"), lists as JSON.
  function flatten(object, prefix = "") {
    return Object.entries(object || {}).flatMap(([key, value]) =>
      value && typeof value === "object" && !Array.isArray(value) ? flatten(value, `${prefix}${key}.`)
        : [[`${prefix}${key}`, value]]);
  }

  // ---- Try it ----------------------------------------------------------------------------------------------
  // The model loads on the board when asked for (it stays loaded there): a page view alone loads nothing.
  function setUpTry(run) {
    const card = document.getElementById("try-card");
    // can_try: the API says whether the run has what the model needs (a sweep trial may keep no weights).
    if (run.status !== "finished" || run.can_try === false || evalName) { card.hidden = true; return; }
    card.hidden = false;
    if (tryReady) return;
    tryReady = true;
    const form = document.getElementById("try-form");
    const load = el("button", {type: "button", id: "try-load"}, "Load the model");
    load.addEventListener("click", () => { load.disabled = true; load.textContent = "Loading the model…"; buildTry(form); });
    fill(form, el("div", {}, load));
  }

  async function buildTry(form) {
    let takes;
    try {
      takes = await api(`${base}/inputs`);
    } catch (exc) {
      fill(form, el("div", {class: "alert inline", role: "alert"}, `Cannot try this run: ${exc.message}`));
      return;
    }
    // A run that only generates text takes {"prompt", "max_tokens"}; the others take serve's rows and settings.
    const generative = GENERATES.includes(takes.task);
    const fields = takes.input_fields;
    const big = new Set(["context", "text", "prompt", "source", "article", "document"]);
    const inputs = fields.map((field) => el("label", {class: "field"}, field,
      big.has(field) ? el("textarea", {name: field, rows: 3, required: true})
                     : el("input", {name: field, type: "text", required: true, autocomplete: "off"})));
    const settings = Object.entries(takes.settings || {});
    const settingInputs = settings.map(([name, spec]) => el("label", {class: "field small-field", title: spec.help || ""},
      name, spec.type === "bool" ? el("input", {name: `setting:${name}`, type: "checkbox"})
        : el("input", {name: `setting:${name}`, type: spec.type === "str" ? "text" : "number",
                       step: spec.type === "float" ? "any" : "1", placeholder: spec.help || "default"})));
    fill(form, inputs,
      settingInputs.length ? el("details", {class: "settings"}, el("summary", {}, "Settings"),
                                el("div", {class: "settings-grid"}, settingInputs)) : null,
      el("div", {}, el("button", {type: "submit", class: "primary"}, generative ? "Generate" : "Predict")));
    form.onsubmit = (event) => { event.preventDefault(); sendTry(form, fields, settings, generative); };
  }

  async function sendTry(form, fields, settings, generative) {
    const result = document.getElementById("try-result");
    const data = new FormData(form);
    const row = Object.fromEntries(fields.map((field) => [field, data.get(field)]));
    const chosen = {};
    for (const [name, spec] of settings) {
      const input = form.elements[`setting:${name}`];
      if (spec.type === "bool") { if (input.checked) chosen[name] = true; continue; }
      if (input.value === "") continue;
      chosen[name] = spec.type === "int" ? parseInt(input.value, 10)
        : spec.type === "float" ? parseFloat(input.value) : input.value;
    }
    const body = generative ? {prompt: row.prompt, ...chosen} : {inputs: [row], settings: chosen};
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    fill(result, el("p", {class: "muted"}, "Running the model…"));
    try {
      const answer = await api(`${base}/try`, {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify(body)});
      fill(result, answerView(answer));
    } catch (exc) {
      fill(result, el("div", {class: "alert inline", role: "alert"}, exc.message));
    } finally {
      button.disabled = false;
    }
  }

  function answerView(answer) {
    if (answer.text !== undefined) return el("pre", {class: "answer", id: "try-answer"}, answer.text);
    const prediction = answer.predictions[0];
    const summary = prediction && typeof prediction === "object" && "label" in prediction
      ? el("p", {class: "answer-summary"}, el("strong", {}, String(prediction.label)),
           "score" in prediction ? ` · score ${number(prediction.score)}` : null)
      : prediction && typeof prediction === "object" && "answer" in prediction
        ? el("p", {class: "answer-summary"}, el("strong", {}, prediction.answer || "(no answer)"),
             "score" in prediction ? ` · score ${number(prediction.score)}` : null) : null;
    return el("div", {}, summary,
      el("pre", {class: "answer", id: "try-answer"}, answer.predictions.map((p) => JSON.stringify(p)).join("\n")));
  }

  // ---- the page ----------------------------------------------------------------------------------------------
  function show(data) {
    const run = data.run;
    document.getElementById("run-content").hidden = false;   // before the charts: Plotly sizes to what it sees
    document.title = `${run.name} · ftune board`;
    fill(document.getElementById("run-name"), run.name);
    fill(document.getElementById("run-facts"), facts(run));
    document.getElementById("errors-link").href = errorsUrl({});
    showEvals(run);
    showMetrics(data.metrics || {}, run.main_metric);
    showClasses(data.details || {});
    showMatrix(data.details || {});
    showCurves(data.curves);
    showPictures(data.pictures);
    keyValues(document.querySelector("#config-table tbody"), flatten(data.config));
    keyValues(document.querySelector("#split-table tbody"), flatten(data.split));
    const cardCard = document.getElementById("card-card");
    cardCard.hidden = !data.model_card;
    // The card's pictures are the run's own files, served by the API (the same addresses as its Pictures).
    const pictureUrls = new Map((data.pictures || []).map((p) => [p.file, p.url]));
    if (data.model_card) {
      fill(document.getElementById("model-card"), board.markdown(data.model_card, (src) => pictureUrls.get(src) || null));
    }
    setUpTry(run);
    clearTimeout(pollTimer);
    if (run.status === "in use") pollTimer = setTimeout(refresh, POLL_MS);
  }

  async function refresh() {
    try {
      show(await api(`${base}${query({eval: evalName})}`));
      board.showError(null);
    } catch (exc) {
      board.showError(exc.message);
      if (exc.status === 404) {   // gone: nothing of it is shown as if it were there
        for (const id of ["run-content", "run-facts", "errors-link", "eval-choice"]) document.getElementById(id).hidden = true;
      }
    }
  }

  board.refreshOnReturn(refresh);
  refresh();
})();
