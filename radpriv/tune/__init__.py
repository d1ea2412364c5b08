"""`radpriv tune`: an Optuna search of learning rate and clipping per ε, with its privacy cost.

study.py         the command: settings, storage, study, parent MLflow run, the trial loop
study_record.py  what is fixed when a study is created: filter, calibration, secret seed and K
trials.py        the objective: one trial = one nested training run
runs.py          a search run's config, and the callback that admits it before its first batch
report.py        selection, the retrain, and what the parent run logs
ledger.py        the claims of the runs on the private data; admission; ε_total per mode
privacy_filter.py  compose/public: the Rényi filter (budget, order α, B(α))
privacy_cost.py  replace-one RDP of a run; random search: repeat-and-select and σ calibration
sampling.py      proposals seeded per trial number; the pruner
space.py         the search space; data_check.py: the public mode's disjointness check
plots.py         Optuna's plots as PNG
"""
