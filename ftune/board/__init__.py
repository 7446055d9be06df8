"""`ftune board [DIR ...]`: a local, read-only web page over the runs, sweeps and evaluations under folders.

The data modules read run folders and never write (`index` finds runs, sweeps and broken folders; `rows` a run's
held-out rows and what is wrong in them; `compare` two runs on the same rows; `sweeps` a sweep's trials; `tries`
a run answering typed inputs through `ftune serve`'s code); `api` serves them as JSON, `pages` as HTML, and `server`
builds the app and runs it. FastAPI, uvicorn, Jinja and Plotly come with the serve extra and are imported only when
the board runs.
"""
