"""`radpriv sweep`: the paper's privacy–utility study in one command.

grid.py (which cells), baselines.py (TF-IDF + LR, DP logistic regression), predictions.py
(test predictions of a logged cell, in memory), stats.py (bootstrap CIs, paired tests, Holm),
report.py (the results table), plots.py (the curve and the heatmap), plan.py (where a sweep
stands), claims.py (how several workers split the cells), run.py (the driver).
"""
