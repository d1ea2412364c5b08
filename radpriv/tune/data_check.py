"""`tune.accounting=public`: refuse a "public" dataset that holds private training reports.

The public mode's guarantee (ε_total = the final run's ε) holds only if the trials never saw a
private training report: in their training split (the trials' weights), nor in their validation
or test split (their metrics are released, and the validation F1 picks the parameters). So
every report of the public table, in any split, is compared with the private training split.
Reports are compared by a hash of their whitespace-normalised, lower-cased text, in memory
only; only the count is reported.
"""

from __future__ import annotations

import hashlib
import logging

from radpriv.data.table import ReportTable
from radpriv.errors import PrivacyError

log = logging.getLogger(__name__)


def _key(text: str) -> bytes:
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).digest()


def check_public_data(private: ReportTable, public: ReportTable) -> None:
    private_train = {_key(t) for t, s in zip(private.texts, private.split) if s == "train"}
    shared = sum(_key(t) in private_train for t in public.texts)
    if shared:
        what = ("the same reports as" if shared >= min(len(public), len(private_train))
                else f"{shared} of the reports of")
        raise PrivacyError(
            f"tune.public_data holds {what} the private training split ({public.source or public.name} vs "
            f"{private.source or private.name}): a search on it would not be public; use a disjoint dataset "
            "or tune.accounting=compose")
    if tuple(public.label_names) != tuple(private.label_names):
        log.warning("tune: the public data's labels (%d) differ from the private data's (%d): the parameters "
                    "found may transfer less well", public.num_labels, private.num_labels)
    log.info("tune: public search on %s (%d reports, none among the %d private training reports)",
             public.name, len(public), len(private_train))
