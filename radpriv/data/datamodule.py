"""The LightningDataModule: tokenised splits, dynamic padding, Poisson batches when private.

A training batch is a *logical* batch (what the privacy analysis sees: one Poisson draw)
cut into *physical* chunks that fit in memory. Within a logical batch the reports are sorted
by length before chunking, so each chunk is padded only to its own longest report; this
reorders reports inside a batch already drawn and so leaves the sampling, and the privacy
analysis, unchanged.

At the patient unit (`unit="patient"`, radpriv/data/patients.py) a private batch is a Poisson
draw of *patients*, each bringing its training reports (at most `max_reports_per_patient`).
A patient's reports always share one physical chunk, and each chunk carries `patient`, the
chunk-local patient of every row, so that DP-SGD clips one summed gradient per patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from radpriv.data.patients import PatientIndex
from radpriv.data.sampling import PoissonBatchSampler, ShuffledBatchSampler, poisson_rate_and_steps
from radpriv.data.table import ReportTable
from radpriv.data.tokens import tokenize_cached
from radpriv.privacy.randomness import PrivateRandomness


class TokenizedReports(Dataset):
    """(token ids, label row) per report; index i is row i of the split's table."""

    def __init__(self, input_ids: list[np.ndarray], labels: np.ndarray):
        self.input_ids = input_ids
        self.labels = labels.astype(np.float32)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int):
        return i, self.input_ids[i], self.labels[i]


def pad_chunk(items, pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of (index, ids, labels) to the longest ids in it (or to `pad_to`)."""
    longest = max(len(ids) for _, ids, _ in items)
    if pad_to is not None:
        longest = max(longest, int(pad_to))
    input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), longest), dtype=torch.long)
    for row, (_, ids, _) in enumerate(items):
        input_ids[row, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        attention[row, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": torch.from_numpy(np.stack([lab for _, _, lab in items])),
        "index": torch.tensor([i for i, _, _ in items], dtype=torch.long),
    }


@dataclass
class LogicalBatch:
    """One optimisation step's reports, as physical chunks (longest first)."""

    chunks: list[dict[str, torch.Tensor]] = field(default_factory=list)
    size: int = 0

    def pin_memory(self) -> LogicalBatch:
        """Page-locked copies (DataLoader(pin_memory=True) calls this): faster copies to a GPU."""
        return LogicalBatch([{k: v.pin_memory() for k, v in c.items()} for c in self.chunks], self.size)


class LogicalBatchCollator:
    """Chunks of at most `physical_batch_size` reports, longest first; with `patient_of` (row →
    patient) a patient's reports stay in one chunk, whose `patient` tensor numbers them."""

    def __init__(self, pad_id: int, physical_batch_size: int, pad_to: int | None = None,
                 patient_of: np.ndarray | None = None):
        self.pad_id = pad_id
        self.physical_batch_size = physical_batch_size
        self.pad_to = pad_to
        self.patient_of = patient_of

    def __call__(self, items) -> LogicalBatch:
        if self.patient_of is not None:
            return self._by_patient(items)
        items = sorted(items, key=lambda it: len(it[1]), reverse=True)
        p = self.physical_batch_size
        chunks = [pad_chunk(items[s:s + p], self.pad_id, self.pad_to) for s in range(0, len(items), p)]
        return LogicalBatch(chunks=chunks, size=len(items))

    def _by_patient(self, items) -> LogicalBatch:
        groups: dict[int, list] = {}
        for it in items:
            groups.setdefault(int(self.patient_of[it[0]]), []).append(it)
        # patients with the longest report first; each chunk is filled with whole patients
        ordered = sorted(groups.values(), key=lambda g: max(len(it[1]) for it in g), reverse=True)
        chunks, current, rows = [], [], 0
        for group in ordered:
            if current and rows + len(group) > self.physical_batch_size:
                chunks.append(self._chunk(current))
                current, rows = [], 0
            current.append(group)
            rows += len(group)
        if current:
            chunks.append(self._chunk(current))
        return LogicalBatch(chunks=chunks, size=len(items))

    def _chunk(self, patients: list[list]) -> dict[str, torch.Tensor]:
        chunk = pad_chunk([it for group in patients for it in group], self.pad_id, self.pad_to)
        chunk["patient"] = torch.tensor([k for k, group in enumerate(patients) for _ in group], dtype=torch.long)
        return chunk


class EvalCollator:
    def __init__(self, pad_id: int, pad_to: int | None = None):
        self.pad_id = pad_id
        self.pad_to = pad_to

    def __call__(self, items) -> dict[str, torch.Tensor]:
        return pad_chunk(items, self.pad_id, self.pad_to)


def length_sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    """Evaluation batches of similar length (order does not matter for metrics)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[s:s + batch_size].tolist() for s in range(0, len(order), batch_size)]


class ReportDataModule(L.LightningDataModule):
    def __init__(self, table: ReportTable, tokenizer, *, max_length: int, batch_size: int,
                 physical_batch_size: int, eval_batch_size: int = 64, poisson: bool = False,
                 seed: int = 0, cache_dir=None, padding: str = "dynamic", unit: str = "report",
                 max_reports_per_patient: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False):
        super().__init__()
        # DataLoader workers collate (pad) only: batch samplers, and so every Poisson draw, run in
        # the main process, from its private randomness
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.table = table
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.physical_batch_size = physical_batch_size
        self.eval_batch_size = eval_batch_size
        self.poisson = poisson
        # privacy.secure_mode: Poisson masks from a CSPRNG (radpriv/privacy/randomness.py)
        self.secure_sampling = False
        self.seed = seed
        self.cache_dir = cache_dir
        if padding not in ("dynamic", "max_length"):
            from radpriv.errors import ConfigError
            raise ConfigError(f"data.padding={padding!r}: expected dynamic or max_length")
        # max_length: every chunk padded to max_length (the common fixed-shape baseline; only
        # for comparison: dynamic padding computes the same losses on fewer positions)
        self.pad_to = max_length if padding == "max_length" else None
        self.splits: dict[str, ReportTable] = {s: table.subset(s) for s in ("train", "val", "test")}
        self.datasets: dict[str, TokenizedReports] = {}
        if len(self.splits["train"]) == 0:
            from radpriv.errors import DataError
            raise DataError(f"{table.source or table.name}: the training split is empty")
        # the privacy unit: patients (a PatientIndex of the training split) or reports (None)
        self.unit = unit
        self.patients = PatientIndex.of(self.splits["train"]) if unit == "patient" else None
        self.max_reports_per_patient = max_reports_per_patient

    # -- sizes the privacy analysis depends on (public: derived from N and config only) --
    @property
    def num_train(self) -> int:
        """Training reports."""
        return len(self.splits["train"])

    @property
    def num_units(self) -> int:
        """Training units: N of the privacy analysis (patients at the patient unit, else reports)."""
        return len(self.patients) if self.patients is not None else self.num_train

    @property
    def sample_rate(self) -> float:
        """q = b / N_units under DP (b: expected units per batch); reports without DP."""
        return poisson_rate_and_steps(self.num_units if self.poisson else self.num_train, self.batch_size)[0]

    @property
    def steps_per_epoch(self) -> int:
        return poisson_rate_and_steps(self.num_units if self.poisson else self.num_train, self.batch_size)[1]

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def setup(self, stage: str | None = None) -> None:
        for name, split in self.splits.items():
            if name not in self.datasets and len(split):
                ids = tokenize_cached(split, self.tokenizer, self.max_length, self.cache_dir)
                self.datasets[name] = TokenizedReports(ids, split.labels)

    def train_dataloader(self) -> DataLoader:
        n = self.num_train
        trainer = self.trainer
        # fresh per fit (i.e. per invocation): a resumed run never replays earlier batches
        randomness = PrivateRandomness(self.secure_sampling) if self.poisson else None
        by_patient = self.poisson and self.patients is not None
        groups = self.patients.members if by_patient else None
        cap = self.max_reports_per_patient if by_patient else None
        units = self.num_units if self.poisson else n
        if trainer is not None and trainer.world_size > 1:  # DDP: each rank draws from its own shard
            from radpriv.data.distributed_sampling import distributed_batch_sampler

            sampler = distributed_batch_sampler(
                units, poisson=self.poisson, sample_rate=self.sample_rate, batch_size=self.batch_size,
                steps=self.steps_per_epoch, seed=self.seed, rank=trainer.global_rank,
                world_size=trainer.world_size, randomness=randomness, groups=groups, cap=cap)
        elif self.poisson:
            sampler = PoissonBatchSampler(units, self.sample_rate, self.steps_per_epoch, randomness, groups, cap)
        else:
            sampler = ShuffledBatchSampler(n, self.batch_size, self.seed)
        collate = LogicalBatchCollator(self.pad_id, self.physical_batch_size, self.pad_to,
                                       self.patients.patient_of if by_patient else None)
        return DataLoader(self.datasets["train"], batch_sampler=sampler, collate_fn=collate, **self._loader_options())

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.datasets[split]
        batches = length_sorted_batches([len(x) for x in ds.input_ids], self.eval_batch_size)
        return DataLoader(ds, batch_sampler=batches, collate_fn=EvalCollator(self.pad_id, self.pad_to),
                          **self._loader_options())

    def _loader_options(self) -> dict:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "persistent_workers": self.num_workers > 0}

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
