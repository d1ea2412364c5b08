"""`radpriv tune`: an Optuna search of learning rate and clipping per ε, with its privacy cost.

study.py       the command: settings, storage, study, parent MLflow run, the trial loop
trials.py      the objective: one trial = one nested training run
runs.py        a search run's config, and the callback that records its privacy plan
report.py      selection, the retrain, and what the parent run logs
ledger.py      which runs touched the private data, and ε_total per accounting mode
privacy_cost.py  the dp-accounting events: composition, repeat-and-select, σ calibration
sampling.py    proposals seeded per trial number; the pruner
space.py       the search space; data_check.py: the public mode's disjointness check
plots.py       Optuna's plots as PNG
"""
