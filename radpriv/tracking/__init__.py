"""MLflow: run set-up, params, privacy spend, artifacts and the pyfunc model.

The only package that writes to the tracking store. Nothing derived from report text except
model weights and metrics is ever handed to it.
"""
