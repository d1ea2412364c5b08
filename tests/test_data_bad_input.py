"""Bad input: every problem is a one-line DataError naming the file, line/column, and the fix.

All inputs are tiny synthetic files written here; no real report text.
"""

from __future__ import annotations

import csv
import io
import tarfile
import urllib.error
from pathlib import Path

import pytest

from radpriv.data import openi as openi_mod
from radpriv.data.ct_rate_text import load_ct_rate_text
from radpriv.data.openi import load_openi
from radpriv.data.schemas import CT_RATE18
from radpriv.data.sources import load_table
from radpriv.errors import DataError

OPENI_HEADER = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
CT_HEADER = ["AccessionNo", "report_text", *CT_RATE18]


def _write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _ct_rows(n: int = 4) -> list[list]:
    return [[f"train_{k}", f"Synthetic sentence {k}.", *([0] * 18)] for k in range(n)]


def _openi_rows() -> list[list]:
    return [
        [1, "normal", "normal", "Xray", "", "", "Synthetic clear lungs.", "Synthetic normal."],
        [2, "Cardiomegaly", "Cardiomegaly", "Xray", "", "", "Synthetic big heart.", "Synthetic cardiomegaly."],
        [3, "normal", "normal", "Xray", "", "", "Synthetic no change.", "Synthetic stable."],
    ]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- missing files / names

def test_missing_file(tmp_path: Path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError) as e:
        load_ct_rate_text({"path": str(missing)}, seed=0)
    assert str(missing) in _one_line(e) and "data.path" in str(e.value)
    with pytest.raises(DataError) as e:
        load_openi({"path": str(missing)}, seed=0)
    assert str(missing) in _one_line(e)


def test_ct_default_path_missing(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RADPRIV_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_ct_rate_text({}, seed=0)
    assert str(tmp_path / "ct_rate_text" / "train.csv") in _one_line(e)
    monkeypatch.delenv("RADPRIV_DATA_DIR")
    with pytest.raises(DataError) as e:
        load_ct_rate_text({}, seed=0)
    assert "$RADPRIV_DATA_DIR/ct_rate_text/train.csv" in _one_line(e)


def test_unknown_dataset_name():
    with pytest.raises(DataError) as e:
        load_table({"name": "mimic_typo"}, seed=0)
    assert "'ct_rate_text'" in _one_line(e) and "'openi'" in str(e.value)


def test_unknown_label_mode_and_bad_fraction(tmp_path: Path):
    p = _write_rows(tmp_path / "r.csv", OPENI_HEADER, _openi_rows())
    with pytest.raises(DataError, match="chexpert_mesh"):
        load_openi({"path": str(p), "labels": "chexpert"}, seed=0)
    with pytest.raises(DataError, match="val_fraction"):
        load_openi({"path": str(p), "val_fraction": 1.5}, seed=0)


# ----------------------------------------------------------------------------- CSV content

def test_missing_columns(tmp_path: Path):
    p = _write_rows(tmp_path / "t.csv", ["AccessionNo", "report_text", *CT_RATE18[:-2]], [])
    with pytest.raises(DataError) as e:
        load_ct_rate_text({"path": str(p)}, seed=0)
    msg = _one_line(e)
    assert str(p) in msg and "Bronchiectasis" in msg and "Interlobular septal thickening" in msg
    assert "found" in msg and "Medical material" in msg
    p = _write_rows(tmp_path / "r.csv", ["uid", "MeSH", "impression"], [])
    with pytest.raises(DataError, match="findings"):
        load_openi({"path": str(p)}, seed=0)


@pytest.mark.parametrize("bad", ["2", "yes", ""])
def test_bad_label_value_names_line_and_column(tmp_path: Path, bad: str):
    rows = _ct_rows()
    rows[2][2 + CT_RATE18.index("Emphysema")] = bad
    p = _write_rows(tmp_path / "t.csv", CT_HEADER, rows)
    with pytest.raises(DataError) as e:
        load_ct_rate_text({"path": str(p)}, seed=0)
    msg = _one_line(e)
    assert str(p) in msg and "line 4" in msg and "'Emphysema'" in msg and repr(bad) in msg


def test_float_labels_accepted(tmp_path: Path):
    rows = _ct_rows(10)
    rows[0][2] = "1.0"
    rows[1][2] = "0.0"
    t = load_ct_rate_text({"path": str(_write_rows(tmp_path / "t.csv", CT_HEADER, rows))}, seed=0)
    assert t.labels[t.ids.index("train_0"), 0] == 1.0


def test_bad_gold_label(tmp_path: Path):
    _write_rows(tmp_path / "indiana_reports.csv", OPENI_HEADER, _openi_rows())
    from radpriv.data.schemas import NEGBIO_FINDINGS
    header = ["filename", *NEGBIO_FINDINGS, "normal"]
    gold = [[f"CXR{k}", *([0] * 14), 1] for k in (1, 2, 3)]
    gold[1][1] = "yes"
    _write_rows(tmp_path / "openi_gld_std14.csv", header, gold)
    with pytest.raises(DataError) as e:
        load_openi({"path": str(tmp_path), "labels": "negbio"}, seed=0)
    msg = _one_line(e)
    assert "openi_gld_std14.csv" in msg and "line 3" in msg and "'Atelectasis'" in msg


def test_negbio_missing_gold_file(tmp_path: Path):
    p = _write_rows(tmp_path / "indiana_reports.csv", OPENI_HEADER, _openi_rows())
    with pytest.raises(DataError) as e:
        load_openi({"path": str(p), "labels": "negbio"}, seed=0)
    assert str(tmp_path / "openi_gld_std14.csv") in _one_line(e) and "data.gold_path" in str(e.value)


def test_negbio_rows_without_gold_label_are_counted(tmp_path: Path):
    _write_rows(tmp_path / "indiana_reports.csv", OPENI_HEADER, _openi_rows())
    from radpriv.data.schemas import NEGBIO_FINDINGS
    _write_rows(tmp_path / "openi_gld_std14.csv", ["filename", *NEGBIO_FINDINGS, "normal"],
                [[f"CXR{k}", *([0] * 14), 1] for k in (1, 2)])
    t = load_openi({"path": str(tmp_path), "labels": "negbio", "val_fraction": 0, "test_fraction": 0}, seed=0)
    assert t.excluded == {"empty_text": 0, "no_gold_label": 1} and t.ids == ("CXR1", "CXR2")


def test_non_utf8(tmp_path: Path):
    p = tmp_path / "t.csv"
    data = io.StringIO()
    w = csv.writer(data)
    w.writerow(CT_HEADER)
    w.writerows(_ct_rows())
    p.write_bytes(data.getvalue().encode("utf-8").replace(b"Synthetic sentence 1", b"Synthetic s\xe9ntence 1"))
    with pytest.raises(DataError) as e:
        load_ct_rate_text({"path": str(p)}, seed=0)
    msg = _one_line(e)
    assert str(p) in msg and "line 3" in msg and "UTF-8" in msg


def test_duplicate_ids(tmp_path: Path):
    rows = _ct_rows(5)
    rows[3][0] = "train_1"
    p = _write_rows(tmp_path / "t.csv", CT_HEADER, rows)
    with pytest.raises(DataError) as e:
        load_ct_rate_text({"path": str(p)}, seed=0)
    msg = _one_line(e)
    assert "'train_1'" in msg and "line 3" in msg and "line 5" in msg
    rows = _openi_rows()
    rows[2][0] = 1
    p = _write_rows(tmp_path / "r.csv", OPENI_HEADER, rows)
    with pytest.raises(DataError, match="'CXR1' at line 2, line 4"):
        load_openi({"path": str(p)}, seed=0)


def test_ragged_row(tmp_path: Path):
    p = tmp_path / "t.csv"
    p.write_text(",".join(CT_HEADER) + "\ntrain_1,Synthetic.,0\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: 3 cells"):
        load_ct_rate_text({"path": str(p)}, seed=0)


def test_explicit_test_ids_missing(tmp_path: Path):
    p = _write_rows(tmp_path / "r.csv", OPENI_HEADER, _openi_rows())
    with pytest.raises(DataError, match="test_ids_path"):
        load_openi({"path": str(p), "test_ids_path": str(tmp_path / "ids.txt")}, seed=0)


# ----------------------------------------------------------------------------- XML / archives

def _xml(uid: str) -> str:
    return (f'<eCitation><uId id="CXR{uid}"/><Abstract><AbstractText Label="FINDINGS">Synthetic {uid}.'
            f'</AbstractText></Abstract><MeSH><major>normal</major></MeSH></eCitation>')


def test_broken_xml_names_file_and_line(tmp_path: Path):
    (tmp_path / "1.xml").write_text(_xml("1"), encoding="utf-8")
    (tmp_path / "2.xml").write_text("<eCitation>\n<uId id='CXR2'>\n</eCitation>", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_openi({"path": str(tmp_path)}, seed=0)
    msg = _one_line(e)
    assert "2.xml" in msg and "line 3" in msg


def test_xml_without_uid_and_duplicate_uid(tmp_path: Path):
    (tmp_path / "a.xml").write_text(_xml("1"), encoding="utf-8")
    (tmp_path / "b.xml").write_text(_xml("1"), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_openi({"path": str(tmp_path)}, seed=0)
    assert "a.xml" in _one_line(e) and "b.xml" in str(e.value)
    (tmp_path / "b.xml").write_text("<eCitation><AbstractText Label='FINDINGS'>x</AbstractText></eCitation>")
    with pytest.raises(DataError, match="b.xml: no <uId"):
        load_openi({"path": str(tmp_path)}, seed=0)


def test_empty_folder_and_corrupt_archive(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .xml reports"):
        load_openi({"path": str(tmp_path / "empty")}, seed=0)
    bad = tmp_path / "NLMCXR_reports.tgz"
    bad.write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="neither a .csv file nor a tar archive"):
        load_openi({"path": str(bad)}, seed=0)


def _tgz_bytes(n: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for k in range(1, n + 1):
            data = _xml(str(k)).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{k}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.fixture
def no_local_data(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RADPRIV_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RADPRIV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openi" / "NLMCXR_reports.tgz"


def test_offline_download_says_where_to_put_files(no_local_data: Path, monkeypatch, tmp_path: Path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError) as e:
        load_table({"name": "openi", "path": None}, seed=0)
    msg = _one_line(e)
    assert str(tmp_path / "data") in msg and "$RADPRIV_DATA_DIR/openi/indiana_reports.csv" in msg
    assert "data.path=" in msg and str(no_local_data) in msg and "name resolution" in msg
    assert not no_local_data.exists() and list(no_local_data.parent.iterdir()) == []


def test_download_kept_only_when_complete_and_valid(no_local_data: Path, monkeypatch):
    monkeypatch.setattr(openi_mod, "MIN_ARCHIVE_REPORTS", 5)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: _FakeResponse(_tgz_bytes(3)))
    with pytest.raises(DataError, match="holds 3 XML reports.*NLMCXR_reports.tgz"):
        load_openi({}, seed=0)
    assert list(no_local_data.parent.iterdir()) == []  # no partial file left behind
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: _FakeResponse(b"<html>error page</html>"))
    with pytest.raises(DataError, match="not a readable gzip tar"):
        load_openi({}, seed=0)
    assert list(no_local_data.parent.iterdir()) == []

    calls = []

    def online(url, timeout):
        calls.append((url, timeout))
        return _FakeResponse(_tgz_bytes(10))

    monkeypatch.setattr("urllib.request.urlopen", online)
    t = load_openi({"val_fraction": 0.1}, seed=0)
    assert calls == [(openi_mod.OPENI_ARCHIVE_URL, openi_mod.DOWNLOAD_TIMEOUT_S)]
    assert no_local_data.is_file() and len(t) == 10 and "archive" in t.source
    assert t.split.count("test") == 2 and "seeded" in t.source
    # cached: no second download
    load_openi({}, seed=0)
    assert len(calls) == 1
