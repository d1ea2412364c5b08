"""`radpriv <command> [key=value ...]`: the command-line entry point.

Commands (`COMMANDS` below, described in `USAGE`): train, evaluate, data check, tune, audit,
sweep, predict, serve, label and pate. Mistakes in the user's input (RadprivError) print one line on
stderr and exit with status 2, so scripts and `mlflow run` fail clearly. A command that
returns a summary prints it as one JSON object on its last stdout line (for scripts); one that
prints its own output (`data check`) returns its exit status.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

from radpriv.errors import RadprivError

USAGE = """usage: radpriv <command> [key=value ...]

commands:
  train      train (DP-)LoRA and log the run to MLflow, e.g.
             radpriv train privacy.epsilon=1 model=minilm data=openi trainer.max_epochs=4
  evaluate   evaluate a logged model on a dataset file, e.g.
             radpriv evaluate run_id=<id> data=openi data.path=<file>
  data check summarise a dataset (counts only) and exit 1 if it cannot be trained on, e.g.
             radpriv data check data=mimic_cxr data.path=/path/to/mimic-cxr

  tune       an Optuna search of lr and clipping per ε, with the search's privacy cost, e.g.
             radpriv tune privacy.epsilon=1 tune.n_trials=8 tune.accounting=compose
  audit      train with m canary reports and audit the result: the one-run ε lower bound
             (Steinke et al. 2023) and a membership-inference AUC; exit 3 if the bound
             exceeds the claimed ε (a privacy bug). The claim must be stated, e.g.
             radpriv audit privacy.epsilon=1 audit.canaries=500
  sweep      the privacy–utility study: models × ε × seeds (+ non-private LoRA and full
             fine-tuning, TF-IDF and DP logistic-regression baselines), bootstrap CIs, paired
             tests, table and plots in one parent MLflow run; finished cells are reused, e.g.
             radpriv sweep data=ct_rate_text 'sweep.epsilons=[0.1,1,10]' 'sweep.seeds=[42,43]'
  predict    label new reports with a trained model (run id, runs:/<id>/model,
             models:/<name>@<alias>, models:/<name>/<version> or a model folder): per-label
             probabilities and 0/1 labels; its own key=value arguments (not Hydra), e.g.
             radpriv predict model=models:/chexpert@champion input=reports.csv output=labels.csv
             [text_column=text|a,b id_column=id batch_size=32 labels=chexpert14|a,b,… num_threads=2]
  serve      serve a trained model over HTTP (MLflow's scoring server, loopback by default;
             same references as predict): POST /invocations, GET /ping; refusals never quote
             a report, e.g.
             radpriv serve models:/chexpert@champion [workers=2 port=5001 host=127.0.0.1
             timeout=60 precision=auto|32-true|bf16-mixed]
  label      label unlabelled reports with a teacher model (same references as predict): a CSV of
             id, text, 0/1 per label at the teacher's thresholds and prob_<label>, plus
             <output>.provenance.json (teacher, its privacy facts; no text) that a student run
             `radpriv train data=csv data.path=<output>` picks up; predict's key=value arguments, e.g.
             radpriv label teacher=models:/ct@champion input=unlabelled.csv output=labelled.csv
  pate       PATE: k non-private teachers on disjoint partitions of the expert data, a Gaussian
             noisy vote per label, ε of the expert reports (also: radpriv label teacher.mode=pate), e.g.
             radpriv pate data=ct_rate_text pate.k=5 pate.sigma=20 pate.input=u.csv pate.output=l.csv

overrides use Hydra syntax over the config tree in radpriv/conf (conf/ at the repo root):
  data=openi|ct_rate_text|ct_rate|mimic_cxr|csv
  model=minilm|bert_small|bert_medium|albert_base|tiny_bert|tiny_albert|custom
  finetune=lora|full  privacy.epsilon=<float|null>  privacy.delta=<float>  seed=<int>
  --cfg job  print the configuration the command would run (resolved) and exit, e.g.
             radpriv train --cfg job privacy.epsilon=0.1
"""

# the commands whose key=value arguments compose a Hydra config (`--cfg job` prints it)
COMPOSING = ("train", "evaluate", "data", "audit", "tune", "sweep", "pate")


def _configure_logging() -> None:
    """radpriv's own INFO lines (counts and plans, never text) on stderr; libraries at WARNING.

    A fresh handler on the *current* stderr each run: tests and notebooks swap streams.
    """
    logger = logging.getLogger("radpriv")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("radpriv: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _no_phone_home() -> None:
    """Machines holding patient reports make no network calls they did not ask for: MLflow's
    and Hugging Face's usage telemetry are off unless the user turns them on explicitly."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # MLflow's per-file download bars for a few-kB model folder are noise on stderr
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=UserWarning, module="opacus")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric", "httpx", "alembic",
                 "mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _cfg_flag(args: list[str]) -> tuple[list[str], bool]:
    """`args` less Hydra's `--cfg job` (also `--cfg=job`, `-c job`), and whether it was there."""
    from radpriv.errors import ConfigError

    out, asked, i = [], False, 0
    while i < len(args):
        arg = args[i]
        if arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            value = arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if value != "job":
                raise ConfigError(f"--cfg {value or '(nothing)'}: radpriv prints the job's configuration "
                                  "only: --cfg job")
            asked, i = True, i + (1 if "=" in arg else 2)
            continue
        out.append(arg)
        i += 1
    return out, asked


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    _configure_logging()
    _no_phone_home()
    _quiet_libraries()
    handler = COMMANDS.get(command)
    if handler is None:
        print(f"radpriv: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    overrides, print_job = _cfg_flag(overrides)
    if print_job:
        return _print_job(command, handler, overrides)
    result = handler(overrides)
    if isinstance(result, int):  # a command that prints its own output returns its exit code
        return result
    if _global_rank() == 0:  # DDP: every rank returns the summary; one copy on stdout, not two interleaved
        print(json.dumps(result, default=float), flush=True)
    return 0


def _print_job(command: str, handler, overrides: list[str]) -> int:
    """`--cfg job`: the command runs up to its config's composition (its own overrides and
    resolutions included), which prints the config as YAML on stdout; nothing is trained."""
    from radpriv.config import JobPrinted, printing_job
    from radpriv.errors import ConfigError

    if command not in COMPOSING:
        raise ConfigError(f"--cfg job: `radpriv {command}` takes its own key=value arguments, not a Hydra "
                          f"config; --cfg job applies to {', '.join(COMPOSING)}")
    with printing_job():
        try:
            result = handler(overrides)
        except JobPrinted:
            return 0
    return result if isinstance(result, int) else 0  # e.g. `radpriv data --cfg job`: its usage


def _global_rank() -> int:
    # Lightning records the process's global rank here once a distributed trainer has set up;
    # a command that never imported Lightning ran in one process
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    return int(getattr(getattr(rank_zero, "rank_zero_only", None), "rank", 0) or 0)


def _train(overrides: list[str]) -> dict:
    from radpriv.config import compose
    from radpriv.train import train

    return train(compose(overrides))


def _evaluate(overrides: list[str]) -> dict:
    from radpriv.config import compose
    from radpriv.evaluate import evaluate

    return evaluate(compose(overrides))


def _data(overrides: list[str]) -> int:
    from radpriv.data.check import data_command

    return data_command(overrides)


def _audit(overrides: list[str]) -> int:
    from radpriv.audit.run import audit_command

    return audit_command(overrides)


def _sweep(overrides: list[str]) -> dict:
    from radpriv.sweep.run import sweep_command

    return sweep_command(overrides)


def _predict(args: list[str]) -> dict:
    from radpriv.predict import predict_command

    return predict_command(args)


def _serve(args: list[str]) -> int:
    from radpriv.serve import serve_command

    return serve_command(args)


def _label(args: list[str]) -> dict:
    """`teacher.mode=pate` is `radpriv pate` with the same arguments (one command, two modes)."""
    if any(a.strip() == "teacher.mode=pate" for a in args):
        return _pate([a for a in args if a.strip() != "teacher.mode=pate"])
    from radpriv.teacher.label import label_command

    return label_command(args)


def _pate(args: list[str]) -> dict:
    from radpriv.teacher.pate import pate_command

    return pate_command(args)


def _tune(overrides: list[str]) -> dict:
    from radpriv.tune.study import tune_command

    return tune_command(overrides)


# command name -> handler(overrides): a dict (the summary printed as the last JSON line) or an
# exit code. Heavy imports stay inside the handlers so `radpriv --help` is instant.
COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "data": _data,
    "audit": _audit,
    "tune": _tune,
    "sweep": _sweep,
    "predict": _predict,
    "serve": _serve,
    "label": _label,
    "pate": _pate,
}


def main(argv: list[str] | None = None) -> None:
    from omegaconf.errors import MissingMandatoryValue

    try:
        code = run(list(sys.argv[1:] if argv is None else argv))
    except RadprivError as e:
        print(f"radpriv: error: {e}", file=sys.stderr)
        code = 2
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "a required value"
        print(f"radpriv: error: {key} is required: set it with {key}=<value>", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("radpriv: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `radpriv ... | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's exit flush quiet
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
