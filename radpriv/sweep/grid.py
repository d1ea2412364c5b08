"""The sweep's cells: models × ε × seeds, plus non-private LoRA and full fine-tuning, and with
`sweep.init_from=public` a public-start twin of every DP-LoRA cell.

A cell is one ordinary training run (`radpriv train` with a few overrides). Every check of the
user's grid happens here, before anything is trained, so a typo costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from radpriv.config import group_options
from radpriv.errors import ConfigError

NONPRIVATE_KINDS = ("lora", "full")  # privacy.epsilon=null, with finetune=lora or finetune=full
DP_KIND = "dp_lora"
# a DP-LoRA cell plus finetune.init_from=public: its own kind, so that it is its own row and its
# cold twin keeps the overrides (and run key) it always had
WARM_KIND = "dp_lora_public"
PUBLIC_KIND = "public"  # a results row, not a cell: the public model alone, no private data
INIT_FROM = ("public",)
# the grid sets these per cell; a user override of them would be silently replaced
GRID_KEYS = ("model", "seed", "privacy.epsilon", "finetune")


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep."""

    model: str
    kind: str  # dp_lora | dp_lora_public | lora | full
    epsilon: float | None  # None: non-private
    seed: int

    @property
    def name(self) -> str:
        """Readable and a valid Hydra value (no '='): minilm-eps0.1-seed42, minilm-full-seed42,
        minilm-eps0.1-public-seed42."""
        what = self.kind if self.epsilon is None else f"eps{self.epsilon:g}"
        start = "-public" if self.kind == WARM_KIND else ""
        return f"{self.model}-{what}{start}-seed{self.seed}"

    @property
    def group(self) -> tuple[str, str, float | None]:
        """The results-table row this cell is one seed of."""
        return self.kind, self.model, self.epsilon

    def overrides(self, epsilon_spelling: str | None = None) -> list[str]:
        """The overrides that make this cell out of the sweep's base training config."""
        out = [f"model={self.model}", f"seed={self.seed}"]
        if self.kind == "full":
            out.append("finetune=full")
        if self.kind == WARM_KIND:
            out.append("finetune.init_from=public")
        eps = "null" if self.epsilon is None else (epsilon_spelling or repr(float(self.epsilon)))
        return [*out, f"privacy.epsilon={eps}"]

    def epsilon_spellings(self) -> list[str]:
        """How a user may have written this ε on a standalone `radpriv train` (1.0 or 1).

        The run key hashes the resolved config, where 1.0 and 1 differ; a finished standalone
        run with either spelling is the same computation and counts as this cell.
        """
        if self.epsilon is None:
            return ["null"]
        spellings = [repr(float(self.epsilon))]
        if float(self.epsilon).is_integer():
            spellings.append(str(int(self.epsilon)))
        return spellings


def _as_list(name: str, value, allow_empty: bool = False) -> list:
    if value is None and allow_empty:
        return []
    if value is None:
        raise ConfigError(f"sweep.{name} is empty: give a list, e.g. sweep.{name}=[...]")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"sweep.{name}={value!r}: expected a list, e.g. sweep.{name}=[a,b]")
    items = list(value)
    if not items and not allow_empty:
        raise ConfigError(f"sweep.{name} is empty: the grid would have no cell")
    return items


def check_models(models) -> list[str]:
    known = [m for m in group_options("model") if m != "custom"]
    out = []
    for m in _as_list("models", models):
        if str(m) not in known:
            raise ConfigError(f"unknown model {m!r} in sweep.models: choose from {', '.join(known)}")
        if str(m) not in out:
            out.append(str(m))
    return out


def check_epsilons(epsilons) -> list[float]:
    out = []
    for e in _as_list("epsilons", epsilons, allow_empty=True):  # [] with nonprivate cells: a partial grid
        try:
            if isinstance(e, bool):
                raise TypeError
            value = float(e)
        except (TypeError, ValueError):
            raise ConfigError(f"sweep.epsilons: {e!r} is not a number; privacy budgets are "
                              "positive numbers (the non-private cells are sweep.nonprivate)") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"sweep.epsilons: ε={e} must be a finite number > 0 (non-private "
                              "training is in sweep.nonprivate)")
        if value not in out:
            out.append(value)
    return out


def check_seeds(seeds) -> list[int]:
    out = []
    for s in _as_list("seeds", seeds):
        if isinstance(s, bool) or not isinstance(s, int) and not (isinstance(s, str) and s.lstrip("-").isdigit()):
            raise ConfigError(f"sweep.seeds: {s!r} is not an integer")
        if int(s) not in out:
            out.append(int(s))
    return out


def check_nonprivate(kinds) -> list[str]:
    kinds = [] if kinds is None else list(kinds)
    bad = [k for k in kinds if k not in NONPRIVATE_KINDS]
    if bad:
        raise ConfigError(f"sweep.nonprivate: {bad} unknown; choose from {', '.join(NONPRIVATE_KINDS)}")
    return [k for k in NONPRIVATE_KINDS if k in kinds]


def check_init_from(value) -> str | None:
    if value is not None and str(value) not in INIT_FROM:
        raise ConfigError(f"sweep.init_from={value!r}: expected null (cold cells only) or public "
                          "(every DP-LoRA cell also from the public model)")
    return None if value is None else str(value)


def build_grid(sweep_cfg: Mapping) -> list[Cell]:
    """Every cell, in training order: per model and seed, the non-private references first
    (they are the yardstick of everything else), then each ε, then each ε from the public model
    (the first of them trains it, once)."""
    models = check_models(sweep_cfg["models"])
    epsilons = check_epsilons(sweep_cfg["epsilons"])
    seeds = check_seeds(sweep_cfg["seeds"])
    nonprivate = check_nonprivate(sweep_cfg["nonprivate"])
    init_from = check_init_from(sweep_cfg["init_from"])
    if not epsilons and not nonprivate:
        raise ConfigError("sweep.epsilons and sweep.nonprivate are both empty: the grid would have no cell")
    cells = []
    for model in models:
        for seed in seeds:
            cells += [Cell(model, kind, None, seed) for kind in nonprivate]
            cells += [Cell(model, DP_KIND, eps, seed) for eps in epsilons]
            if init_from:
                cells += [Cell(model, WARM_KIND, eps, seed) for eps in epsilons]
    return cells


def training_overrides(user_overrides: Sequence[str]) -> list[str]:
    """The user's overrides that every cell starts from: all but sweep.* ones.

    The grid's own keys (model, seed, privacy.epsilon, finetune) are refused: the grid sets
    them per cell, and the user meant the sweep.* list.
    """
    out = []
    for ov in user_overrides:
        key = ov.lstrip("+~").partition("=")[0]
        if key == "sweep" or key.startswith("sweep."):
            continue
        if key in GRID_KEYS:
            hint = {"model": "sweep.models=[...]", "seed": "sweep.seeds=[...]",
                    "privacy.epsilon": "sweep.epsilons=[...]",
                    "finetune": "sweep.nonprivate=[lora,full] (the private cells are LoRA)"}[key]
            raise ConfigError(f"{ov}: the sweep sets {key} per cell; use {hint}")
        out.append(ov)
    return out


def cell_overrides(base: Sequence[str], cell: Cell, epsilon_spelling: str | None = None) -> list[str]:
    """base + the cell's own overrides. finetune.* settings of the user are for the LoRA cells;
    the full fine-tuning cells keep conf/finetune/full.yaml (a LoRA learning rate would wreck
    full fine-tuning)."""
    if cell.kind == "full":
        base = [o for o in base if not o.lstrip("+~").startswith("finetune.")]
    return [*base, *cell.overrides(epsilon_spelling)]
