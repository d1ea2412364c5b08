"""Data: one reader per source format, each producing a `ReportTable`; the DataModule."""

from radpriv.data.table import ReportTable

__all__ = ["ReportTable"]
