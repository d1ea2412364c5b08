"""MLproject `tune` entry point: `mlflow run . -e tune -P epsilon=1 -P n_trials=8`."""

import sys

from train import mlproject_overrides  # pipelines/ is on sys.path when this file runs

from radpriv.cli import main

if __name__ == "__main__":
    main(["tune", *mlproject_overrides(sys.argv[1:])])
