"""Structure sources: directories, tar archives (hostile members refused), the AlphaFold DB API over a real
local HTTP server, Foldcomp databases.

    .venv/bin/pytest -q tests/test_structures_sources.py
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from http_server import Fault as ServerFault
from http_server import LocalHTTPServer

from pipeline_lib.errors import DataValidationError
from pipeline_lib.structures.config import AfdbSource
from pipeline_lib.structures.parse import parse_structure
from pipeline_lib.structures.sources import SourceStats, afdb_models, iter_archive, iter_directory, iter_foldcomp
from pipeline_lib.structures.threedi import encode_structures

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures"
STRUCTURES = FIXTURES / "structures"
AF_PDB = STRUCTURES / "afdb" / "AF-Q96HM7-F1-model_v4.pdb"
AF_CIF = STRUCTURES / "afdb" / "AF-O49373-F1-model_v4.cif"
needs_fixtures = pytest.mark.skipif(not STRUCTURES.is_dir(), reason=f"shared fixtures not available: {STRUCTURES}")


@needs_fixtures
def test_directory_source_is_recursive_sorted_and_filtered(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(AF_PDB, tmp_path / "b.pdb")
    shutil.copy(STRUCTURES / "foldseek_example" / "1tim.pdb.gz", tmp_path / "sub" / "1tim.pdb.gz")
    shutil.copy(AF_CIF, tmp_path / "sub" / "deeper" / "a.cif")
    shutil.copy(STRUCTURES / "foldseek_example" / "d1asha_", tmp_path / "d1asha_")
    (tmp_path / "notes.txt").write_text("not a structure")
    rel = lambda ps: [p.relative_to(tmp_path).as_posix() for p in ps]  # noqa: E731
    assert rel(iter_directory(tmp_path)) == ["b.pdb", "sub/1tim.pdb.gz", "sub/deeper/a.cif"]
    assert rel(iter_directory(tmp_path, recursive=False)) == ["b.pdb"]
    assert "d1asha_" in rel(iter_directory(tmp_path, patterns=["*_"]))
    with pytest.raises(DataValidationError, match="does not exist"):
        list(iter_directory(tmp_path / "missing"))


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", **kind) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kind.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if data else None)


def _hostile_tar(path: Path, mode: str) -> None:
    with tarfile.open(path, mode) as tf:
        _add(tf, "models", type=tarfile.DIRTYPE)
        _add(tf, "models/AF-Q96HM7-F1-model_v4.pdb", AF_PDB.read_bytes())
        _add(tf, "/etc/AF-X-F1-model_v4.pdb", b"ATOM")
        _add(tf, "models/../../escape.pdb", b"ATOM")
        _add(tf, "models/link.pdb", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tf, "models/hard.pdb", type=tarfile.LNKTYPE, linkname="models/AF-Q96HM7-F1-model_v4.pdb")
        _add(tf, "models/fifo.pdb", type=tarfile.FIFOTYPE)
        _add(tf, "models/README.txt", b"readme")
        _add(tf, "models/8crb.pdb.gz", gzip.compress((STRUCTURES / "pdb" / "8crb.pdb").read_bytes()))
        _add(tf, "models/AF-O49373-F1-model_v4.cif", AF_CIF.read_bytes())


@needs_fixtures
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_archive_streams_members_and_refuses_hostile_ones(tmp_path, mode):
    tar = tmp_path / ("models.tar" + (".gz" if mode == "w:gz" else ""))
    _hostile_tar(tar, mode)
    stats = SourceStats()
    blobs = list(iter_archive(tar, stats=stats))
    assert [b.name for b in blobs] == ["models/AF-Q96HM7-F1-model_v4.pdb", "models/8crb.pdb.gz",
                                       "models/AF-O49373-F1-model_v4.cif"]
    assert stats.refused == {"absolute_path": 1, "parent_reference": 1, "link": 2, "special_file": 1}
    assert stats.skipped == {"not_structure": 1} and stats.yielded == 3
    names = [c.name for c in encode_structures(blobs, "mini3di")]
    assert names == ["AF-Q96HM7-F1-model_v4_A", "8crb_A", "8crb_B", "8crb_C", "AF-O49373-F1-model_v4_A"]
    assert not (tmp_path / "escape.pdb").exists() and not Path("/etc/AF-X-F1-model_v4.pdb").exists()


@needs_fixtures
def test_archive_size_limit_and_corrupt_archive(tmp_path):
    tar = tmp_path / "m.tar"
    _hostile_tar(tar, "w")
    stats = SourceStats()
    assert [b.name for b in iter_archive(tar, stats=stats, max_member_bytes=200_000)] == ["models/8crb.pdb.gz"]
    assert stats.refused["too_large"] == 2
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(tar.read_bytes())[:3000])
    with pytest.raises(DataValidationError, match="bad.tar.gz"):
        list(iter_archive(bad))


def _serve_afdb(srv: LocalHTTPServer) -> None:
    """The API's JSON for two accessions (one at a newer model version than the file name in v4 fixtures)."""
    srv.put("/files/AF-Q96HM7-F1-model_v6.pdb", AF_PDB.read_bytes())
    srv.put("/files/AF-O49373-F1-model_v6.cif", AF_CIF.read_bytes())
    for acc, pdb, cif in (("Q96HM7", "AF-Q96HM7-F1-model_v6.pdb", "AF-Q96HM7-F1-model_v6.cif"),
                          ("O49373", "AF-O49373-F1-model_v6.pdb", "AF-O49373-F1-model_v6.cif")):
        entry = {"entryId": f"AF-{acc}-F1", "uniprotAccession": acc, "latestVersion": 6,
                 "pdbUrl": srv.url(f"/files/{pdb}"), "cifUrl": srv.url(f"/files/{cif}")}
        srv.put(f"/api/prediction/{acc}", json.dumps([entry]).encode())


@needs_fixtures
def test_afdb_api_download_versions_and_no_model(tmp_path):
    with LocalHTTPServer(tmp_path / "www") as srv:
        _serve_afdb(srv)
        cfg = AfdbSource(base_url=srv.url("/"), concurrency=2, retries=0)
        stats = SourceStats()
        models = list(afdb_models(["Q96HM7", "P12345", "not-an-accession", "Q96HM7"], tmp_path / "afdb", cfg,
                                  stats=stats))
        assert [(m.accession, m.version, m.path.name) for m in models] == [
            ("Q96HM7", "v6", "AF-Q96HM7-F1-model_v6.pdb")]
        assert stats.afdb == {"downloaded": 1, "no_model": 1, "invalid_accession": 1}
        assert models[0].path.read_bytes() == AF_PDB.read_bytes()
        (chain,) = encode_structures([models[0].path], "mini3di")
        assert chain.name == "AF-Q96HM7-F1-model_v6_A"

        cif_cfg = AfdbSource(base_url=srv.url("/"), file_format="cif", retries=0)
        again = SourceStats()
        got = list(afdb_models(["Q96HM7", "O49373"], tmp_path / "afdb", cif_cfg, stats=again))
        assert [m.path.name for m in got] == ["AF-O49373-F1-model_v6.cif"]
        assert again.afdb == {"failed": 1, "downloaded": 1}  # the Q96HM7 mmCIF is not on the server (404)
        assert again.failures[0][0] == "Q96HM7" and "404" in again.failures[0][1]
        assert [m.path.name for m in afdb_models(["O49373"], tmp_path / "afdb", cif_cfg)] == [got[0].path.name]
        assert len(srv.requests_for("/files/AF-O49373-F1-model_v6.cif")) == 1  # second time: already present


@needs_fixtures
def test_afdb_api_server_errors_are_retried_then_counted(tmp_path):
    with LocalHTTPServer(tmp_path / "www") as srv:
        _serve_afdb(srv)
        srv.add_faults("/api/prediction/Q96HM7", ServerFault(status=503))
        stats = SourceStats()
        cfg = AfdbSource(base_url=srv.url("/"), retries=0)
        assert list(afdb_models(["Q96HM7"], tmp_path / "a", cfg, stats=stats)) == []
        assert stats.afdb == {"failed": 1}
        srv.add_faults("/api/prediction/Q96HM7", ServerFault(status=503))
        retried = AfdbSource(base_url=srv.url("/"), retries=1)
        models = list(afdb_models(["Q96HM7"], tmp_path / "b", retried))
        assert len(models) == 1 and len(srv.requests_for("/api/prediction/Q96HM7")) == 3


def _foldcomp_db(path: Path, files: list[Path]) -> None:
    """A Foldcomp database as ``foldcomp compress --db`` lays it out: data, .index, .lookup, .dbtype."""
    import foldcomp

    data, index, lookup = b"", [], []
    for key, f in enumerate(files):
        name = f.name.removesuffix(".pdb")
        fcz = foldcomp.compress(name, f.read_text())
        index.append(f"{key}\t{len(data)}\t{len(fcz) + 1}\n")
        lookup.append(f"{key}\t{name}\t0\n")
        data += fcz + b"\0"
    path.write_bytes(data)
    Path(f"{path}.index").write_text("".join(index))
    Path(f"{path}.lookup").write_text("".join(lookup))
    Path(f"{path}.dbtype").write_bytes(bytes(4))


@needs_fixtures
def test_foldcomp_source(tmp_path):
    pytest.importorskip("foldcomp", reason="optional: pip install foldcomp")
    files = [AF_PDB, STRUCTURES / "colabfold" / "ERR550519_2213899_unrelaxed_model_1.pdb"]
    _foldcomp_db(tmp_path / "db", files)
    blobs = list(iter_foldcomp(tmp_path / "db"))
    assert [b.name for b in blobs] == ["AF-Q96HM7-F1-model_v4", "ERR550519_2213899_unrelaxed_model_1"]
    for blob, f in zip(blobs, files, strict=False):
        (got,) = parse_structure(blob)
        (want,) = parse_structure(f)
        assert got.name == want.name and got.sequence == want.sequence
        assert abs(got.mean_plddt - want.mean_plddt) < 1.0  # Foldcomp stores pLDDT, rounded
    assert [b.name for b in iter_foldcomp(tmp_path / "db", ids=["ERR550519_2213899_unrelaxed_model_1"])] == [
        "ERR550519_2213899_unrelaxed_model_1"]
    with pytest.raises(DataValidationError, match="not a Foldcomp database"):
        list(iter_foldcomp(tmp_path / "nothing"))


def test_sources_config_section():
    from pipeline_lib.config import load_config
    from pipeline_lib.errors import ConfigError

    sources = "structures.sources=[{kind: afdb, file_format: cif}, {kind: archive, paths: [a.tar]}]"
    cfg = load_config(overrides=["structures.enabled=true", "structures.backend=mini3di", sources])
    s = cfg.structures
    assert s.plddt_threshold == 70 and s.on_mismatch == "quarantine" and s.altloc == "last"
    assert [src.kind for src in s.sources] == ["afdb", "archive"] and s.sources[0].file_format == "cif"
    with pytest.raises(ConfigError, match="backend"):
        load_config(overrides=["structures.backend=esmfold"])
