"""Public warm start (finetune.init_from) and training shards: the issue-10 simulation's parts."""

from __future__ import annotations

import json
from collections import Counter

import mlflow
import pytest
import torch

from radpriv.cli import main
from radpriv.config import compose
from radpriv.data.sources import load_table
from radpriv.data.splits import parse_shard
from radpriv.errors import DataError
from radpriv.model.bundle import load_bundle
from radpriv.tracking.model_ref import local_bundle
from radpriv.train import build
from tests.helpers.cli import TINY, error_lines, train_json

PUBLIC = "data.train_shard=0/2"
PRIVATE = "data.train_shard=1/2"


def test_train_shards_are_disjoint_halves_and_keep_val_and_test(reports_csv):
    path = f"data.path={reports_csv[0]}"
    full, a, b = (load_table(compose([*TINY, path, *extra]).data, 42)
                  for extra in ([], [PUBLIC], [PRIVATE]))
    train = lambda t: {i for i, s in zip(t.ids, t.split) if s == "train"}  # noqa: E731
    assert train(a) | train(b) == train(full) and not train(a) & train(b)
    assert abs(len(train(a)) - len(train(b))) <= 3  # a patient has up to a few reports
    for t in (a, b):
        assert Counter(s for s in t.split if s != "train") == Counter(s for s in full.split if s != "train")
    for bad in ("2/2", "1", "a/b", "0/1"):
        with pytest.raises(DataError, match="train_shard"):
            parse_shard(bad)


def exit_code(argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def _plan(overrides):
    return build(compose(overrides)).plan


@pytest.mark.integration
def test_warm_start_loads_the_source_weights_and_leaves_the_accountant_alone(
        tracking_uri, reports_csv, capsys, tmp_path):
    path = f"data.path={reports_csv[0]}"
    source, _ = train_json(capsys, [*TINY, path, PUBLIC, "privacy.epsilon=null", "finetune.lr=0.05"])
    bundle = local_bundle(source["run_id"], tracking_uri, tmp_path).folder
    src = load_bundle(bundle)

    private = [*TINY, path, PRIVATE, "privacy.epsilon=3"]
    warm = [*private, f"finetune.init_from={source['run_id']}"]
    # the same σ, q and steps with and without the warm start: it is not part of the privacy plan
    cold_plan, warm_plan = _plan(private), _plan(warm)
    assert warm_plan == cold_plan

    # before training, the warm-started net holds the source's adapter and head
    module = build(compose(warm)).module
    torch.testing.assert_close(module.net.head.weight, src.net.head.weight)
    src_lora = {n: p for n, p in src.net.named_parameters() if "lora_" in n}
    own_lora = {n: p for n, p in module.net.named_parameters() if "lora_" in n}
    assert src_lora and len(src_lora) == len(own_lora)
    for (n, p), (m, q) in zip(sorted(src_lora.items()), sorted(own_lora.items())):
        torch.testing.assert_close(q, p, msg=f"{m} vs {n}")

    out, _ = train_json(capsys, warm)
    client = mlflow.MlflowClient(tracking_uri)
    privacy = json.loads(open(client.download_artifacts(out["run_id"], "privacy.json", str(tmp_path))).read())
    assert privacy["warm_start"]["source"] == source["run_id"]
    assert privacy["warm_start"]["source_private"] is False
    assert privacy["noise_multiplier"] == pytest.approx(cold_plan.noise_multiplier)
    assert privacy["steps"] == cold_plan.planned_steps
    assert client.get_run(out["run_id"]).data.tags["radpriv.init_from"] == source["run_id"]


def test_warm_start_refuses_a_source_trained_on_this_runs_reports(tracking_uri, reports_csv, capsys):
    path = f"data.path={reports_csv[0]}"
    source, _ = train_json(capsys, [*TINY, path, PRIVATE, "privacy.epsilon=null"])
    code = exit_code(["train", *TINY, path, PRIVATE, "privacy.epsilon=3", f"finetune.init_from={source['run_id']}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "own training reports" in error_lines(err)[0]


def test_warm_start_bad_references_are_one_line_errors(tracking_uri, reports_csv, capsys, tmp_path):
    path = f"data.path={reports_csv[0]}"
    source, _ = train_json(capsys, [*TINY, path, PUBLIC, "privacy.epsilon=null"])
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "finetune.init_from=not-a-model": "is not a folder",
        f"finetune.init_from={empty}": "no radpriv model",
        "finetune.init_from=0123456789abcdef0123456789abcdef": "init_from=",
        # another adapter shape than the source's
        f"finetune.init_from={source['run_id']} finetune.r=2": "does not match",
        # another encoder than the source's
        f"finetune.init_from={source['run_id']} model=tiny_albert": "trained on encoder",
    }
    for extra, message in cases.items():
        code = exit_code(["train", *TINY, path, PRIVATE, "privacy.epsilon=3", *extra.split()])
        lines = error_lines(capsys.readouterr().err)
        assert code == 2 and len(lines) == 1 and message in lines[0], (extra, lines)
