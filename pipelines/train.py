"""MLproject `main` entry point: `mlflow run . -P epsilon=0.1` lands here.

Thin on purpose: it turns MLflow parameters into radpriv overrides and calls the library.
A parameter left at "default" keeps the value of radpriv's config (so the recipe lives in
one place, radpriv/conf); `extra` carries any further Hydra overrides, space-separated.
"""

import shlex
import sys

from radpriv.cli import main


def mlproject_overrides(args: list[str]) -> list[str]:
    overrides = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "extra":
            overrides += shlex.split(value)
        elif value != "default":
            overrides.append(arg)
    return overrides


if __name__ == "__main__":
    main(["train", *mlproject_overrides(sys.argv[1:])])
