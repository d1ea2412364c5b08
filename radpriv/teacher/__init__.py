"""Teacher-labelled training: a trained model (or a PATE ensemble) labels unlabelled reports.

- `label.py`: `radpriv label teacher=<ref> input=<reports> output=<csv>` — one teacher's
  probabilities and 0/1 labels at its stored thresholds, plus a provenance file.
- `pate.py`: `radpriv pate` — k non-private teachers on disjoint partitions of the
  expert-labelled reports, a Gaussian noisy vote per label, and its privacy cost.
- `provenance.py`: the provenance file beside a labelled CSV, and the teacher guarantee a
  student run built on it states in its privacy.json.
See docs/PRIVACY.md, "Teacher labels and PATE".
"""
