"""The overlap guard: no private training report may be in the public corpus.

A public start costs the private reports nothing only if the public model never saw them. The
guard compares this run's training reports with every public report the public model uses (its
training and validation splits):
- by id, when both read the same dataset (ids are that dataset's record ids: the same id is the
  same report);
- by normalised text (case, punctuation and spacing folded), across datasets: the same report
  exported twice, or a "public" corpus that copied private reports, matches whatever ids it
  carries.
Within one dataset, ids decide: Open-i has 152 wordings shared by 883 different studies (normal
templates such as "The heart is normal in size…"), so equal text there is not the same report.

Everything is computed in memory and only counts leave this module (in the refusal message or
the local log); nothing of it is logged to MLflow (docs/PRIVACY.md, "The release boundary").
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from radpriv.data.table import ReportTable
from radpriv.errors import PrivacyError

log = logging.getLogger(__name__)

_NOT_WORD = re.compile(r"[^0-9a-z]+")
PUBLIC_SPLITS = ("train", "val")  # what the public model is trained and tuned on


def normalised_text(text: str) -> str:
    return _NOT_WORD.sub(" ", text.lower()).strip()


def text_hash(text: str) -> bytes:
    return hashlib.sha256(normalised_text(text).encode("utf-8")).digest()


@dataclass(frozen=True)
class OverlapCheck:
    private_checked: int
    public_reports: int
    by: str  # "id" or "normalised text"
    shared_wordings: int  # same-dataset only: private reports whose wording a public report shares

    def as_dict(self) -> dict:
        return {"private_training_reports_checked": self.private_checked,
                "public_reports_compared": self.public_reports, "compared_by": self.by}


def check_no_overlap(private: ReportTable, public: ReportTable, *, same_dataset: bool) -> OverlapCheck:
    """Refuse (PrivacyError) when a private training report is one of the public model's reports."""
    train = [i for i, s in enumerate(private.split) if s == "train"]
    pub = [i for i, s in enumerate(public.split) if s in PUBLIC_SPLITS]
    pub_ids = {public.ids[i] for i in pub}
    pub_texts = {text_hash(public.texts[i]) for i in pub}
    same_text = sum(text_hash(private.texts[i]) in pub_texts for i in train)
    if same_dataset:
        hits = sum(private.ids[i] in pub_ids for i in train)
        by = "id"
    else:
        hits, by = same_text, "normalised text"
    if hits:
        raise PrivacyError(
            f"public start refused: {hits} of this run's {len(train)} training reports are also in the "
            f"public corpus ({public.name}, compared by {by}). A model trained on them is not public "
            "to them: starting from it would spend their privacy outside DP-SGD's accounting. Remove "
            "them from one side, or start from a model that never saw them")
    if same_dataset and same_text:
        log.info("overlap guard: %d private training reports share their wording with a report of "
                 "the public half (different records of %s: the guard decides by id)", same_text, public.name)
    return OverlapCheck(len(train), len(pub), by, same_text if same_dataset else 0)
