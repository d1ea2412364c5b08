"""MLproject `sweep` entry point: `mlflow run . -e sweep -P data=ct_rate_text`.

The run `mlflow run` opens becomes the sweep's parent run; every cell is a child run of it.
"""

import sys

from train import mlproject_overrides  # pipelines/ is on sys.path when this file runs

from radpriv.cli import main

if __name__ == "__main__":
    main(["sweep", *mlproject_overrides(sys.argv[1:])])
