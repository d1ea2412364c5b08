"""MLproject `audit` entry point: `mlflow run . -e audit -P epsilon=1 -P canaries=500`."""

import sys

from train import mlproject_overrides  # pipelines/ is on sys.path when this file runs

from radpriv.cli import main

if __name__ == "__main__":
    main(["audit", *mlproject_overrides(sys.argv[1:])])
