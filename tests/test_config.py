import pytest

from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError
from tests.conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_presets_validate():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.source.kind == "embedded" and demo.split_level == "c50"
    real = load_config(ROOT / "configs" / "esm2_ur50d.yaml")
    assert real.source.kind == "uniref" and [lv.name for lv in real.cluster.levels] == ["u50"]
    assert real.split_level == "u50" and real.train.cluster_level == "u50" and real.split.decontaminate.held_out


def test_unknown_key_names_its_path(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "cluster:\n  treads: 4\n"))
    assert "cluster.treads" in str(err.value) and "unknown key" in str(err.value)


def test_wrong_type_names_path_and_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "cluster:\n  threads: many\n"))
    msg = str(err.value)
    assert "cluster.threads" in msg and "'many'" in msg and "integer" in msg


def test_source_kind_and_nested_list_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "source: {kind: fasta}\n"))
    assert "source.paths" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "cluster:\n  levels:\n    - {name: a, min_seq_id: 2}\n"))
    assert "cluster.levels.0.min_seq_id" in str(err.value)


def test_levels_must_decrease_and_split_level_exist(tmp_path):
    with pytest.raises(ConfigError, match="strictly decreasing"):
        load_config(write(tmp_path, "cluster:\n  levels: [{name: a, min_seq_id: 0.5}, {name: b, min_seq_id: 0.9}]\n"))
    with pytest.raises(ConfigError, match="split.level 'c30' is not a cluster level"):
        load_config(write(tmp_path, "split: {level: c30}\n"))


def test_overrides(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["cluster.threads=8", "split.valid_fraction=0.1",
                                                        "source={kind: fasta, paths: [a.fa]}"])
    assert cfg.cluster.threads == 8 and cfg.split.valid_fraction == 0.1 and cfg.source.paths == ["a.fa"]
    with pytest.raises(ConfigError, match="source.corpus: unknown key"):
        load_config(ROOT / "configs" / "demo.yaml", ["source.kind=fasta", "source.paths=[a.fa]"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(None, ["cluster.threads"])
    with pytest.raises(ConfigError, match="cluster.threads"):
        load_config(None, ["cluster.threads=-1"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_config_hash_changes_with_values():
    a, b = load_config(None), load_config(None, ["seed=1"])
    assert a.hash() != b.hash() and a.hash() == load_config(None).hash()


def test_stage_section_errors_keep_their_prefix(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "structures:\n  plddt_threshold: high\n  nonsense: 1\n"))
    msg = str(err.value)
    assert "structures.plddt_threshold" in msg and "structures.nonsense: unknown key" in msg
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(write(tmp_path, "train: 3\n"))


def test_config_reference_doc_is_current():
    """docs/config.md is generated from the schema; regenerate with: plm config --reference > docs/config.md"""
    from pipeline_lib.config_reference import config_reference

    text = config_reference()
    assert (ROOT / "docs" / "config.md").read_text() == text + "\n"
    for kind in ("directory", "archive", "afdb", "foldcomp", "embedded"):  # each structure source has its keys
        assert f"## `structures.sources[] (kind: {kind})`" in text
    assert "| `sources` | `list of (kind: directory \\| kind: archive" in text
    assert "train.shape[]" not in text and "Annotated[" not in text and "FieldInfo" not in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert all(ln.replace("\\|", "").count("|") == 5 for ln in rows)  # no bare '|' splits a table cell


def test_url_workdir_or_lineage_path_is_refused_pointing_at_storage_url(tmp_path):
    """`workdir: s3://...` used to become a local folder named `s3:/...`: now a config error that says what to do."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "workdir: s3://bucket/plm\n"))
    msg = str(err.value)
    assert "workdir" in msg and "storage.url: s3://bucket/plm" in msg and "local" in msg
    with pytest.raises(ConfigError, match="lineage.path: .*DuckDB cannot write to object storage"):
        load_config(ROOT / "configs" / "demo.yaml", ["lineage.path=s3://bucket/lineage.duckdb"])
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"workdir={tmp_path}/s3-cache", "storage.url=s3://bucket/plm"])
    assert cfg.workdir_path == tmp_path / "s3-cache" and cfg.storage.url == "s3://bucket/plm"
    assert not (tmp_path / "s3:").exists()


def test_an_unknown_model_size_is_a_config_error_before_any_stage_runs(tmp_path):
    """A typo in train.model used to surface when training started, after the whole data path had run."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "train:\n  model: 650m\n"))
    assert "train" in str(err.value) and "'650m'" in str(err.value) and "650M" in str(err.value)
    with pytest.raises(ConfigError, match="not a size of msa_transformer .*tiny, 100M"):
        load_config(write(tmp_path, "train:\n  architecture: msa_transformer\n  model: 650M\n"))
    msa = write(tmp_path, "train:\n  architecture: msa_transformer\n  model: 100M\n")
    assert load_config(msa).train.model == "100M"
    shaped = load_config(write(tmp_path, "train:\n  model: custom\n  shape: {num_layers: 2, hidden_size: 64, "
                                         "num_heads: 4}\n"))
    assert shaped.train.shape.num_layers == 2  # an explicit shape needs no size name


def _alias_bomb(levels: int, leaf: str = '"x"') -> str:
    lines = [f"l0: &l0 [{', '.join([leaf] * 9)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nseed: *l{levels - 1}\n"


def test_a_yaml_alias_bomb_is_refused_by_its_expanded_size(tmp_path):
    from pipeline_lib.config_overrides import MAX_YAML_VALUES

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(9))   # 9**9 = 387 M values in 400 bytes
    assert len(bomb.read_bytes()) < 500 and 9 ** 9 > MAX_YAML_VALUES
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(bomb)
    with pytest.raises(ConfigError, match="alias bomb"):  # the same through an override
        load_config(None, ["seed=" + _alias_bomb(9).replace("\n", ", ").replace("seed: ", "s: ").join("{}")])


def test_error_messages_are_bounded_before_credentials_are_redacted(tmp_path):
    """Under the size bound, a large value still makes a short message, with every URL's password hidden."""
    url = '"https://user:hunter2@example.org/x.fa?token=abc"'
    for levels in (5, 2):  # 59,049 values; 81 values shallow enough that the message shows the URLs
        medium = tmp_path / f"medium{levels}.yaml"
        medium.write_text(_alias_bomb(levels, url))
        with pytest.raises(ConfigError) as err:
            load_config(medium)
        msg = str(err.value)
        assert "seed" in msg and "hunter2" not in msg and "abc" not in msg and len(msg) < 1500, msg
    assert "https://***@example.org/x.fa?token=***" in msg


def test_unsafe_overrides_name_executables_and_paths_outside_the_workdir(tmp_path):
    from pipeline_lib.config import unsafe_overrides

    work = tmp_path / "w"
    found = unsafe_overrides([
        "cluster.binary=/bin/sh", "structures.foldseek_binary=foldseek", f"workdir={tmp_path / 'other'}",
        "source={kind: fasta, paths: [/etc/passwd]}", f"source={{kind: fasta, paths: [{work / 'in.fa'}]}}",
        "source={kind: fasta, paths: [https://example.org/a.fa]}", "cluster.threads=4", "name=../../x",
        f"lineage.path={work}/../escape.duckdb"], work)
    assert [f.split(":")[0] for f in found] == ["cluster.binary", "structures.foldseek_binary", "workdir", "source",
                                                "name", "lineage.path"]
    assert "names an executable" in found[0] and "/etc/passwd" in found[3]


def test_overrides_index_lists_and_errors_name_the_override():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["cluster.levels.1.min_seq_id=0.3"])
    assert [lv.min_seq_id for lv in cfg.cluster.levels] == [0.9, 0.3]
    assert load_config(None, ["cluster.levels.0.name=c95"]).cluster.levels[0].name == "c95"  # from the defaults
    with pytest.raises(ConfigError, match="cluster.levels has 2 items; no index 5"):
        load_config(None, ["cluster.levels.5.min_seq_id=0.3"])
    with pytest.raises(ConfigError, match=r"cluster.levels is a list: index it by number"):
        load_config(None, ["cluster.levels.x.min_seq_id=0.3"])
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "demo.yaml", ["cluster.threads=lots", "clustr.threads=2",
                                                     "cluster.levels.0.min_seq_idd=3"])
    msg = str(err.value)
    assert "demo.yaml with its overrides" in msg
    assert "cluster.threads: Input should be a valid integer" in msg and "[override 'cluster.threads=lots']" in msg
    assert "clustr: unknown key (did you mean 'cluster'?) [override 'clustr.threads=2']" in msg
    assert "cluster.levels.0.min_seq_idd: unknown key (did you mean 'min_seq_id'?)" in msg
    # a check across a section's keys blames an override only when it names the override's key
    for sets, blamed in ((["train.total_steps=20"], False), (["train.batch_tokens=4096"], True)):
        with pytest.raises(ConfigError) as err:
            load_config(ROOT / "configs" / "demo.yaml", ["train.architecture=msa_transformer", *sets])
        assert "batch_tokens (4096) must hold one MSA" in str(err.value)
        assert ("[override 'train.batch_tokens=4096']" in str(err.value)) == blamed
        assert "[override 'train.total_steps=20']" not in str(err.value)


def test_unknown_keys_in_a_file_suggest_the_closest_valid_one(tmp_path):
    (tmp_path / "c.yaml").write_text("trian: {max_steps: 3}\nsplit: {valid_fractoin: 0.1}\n"
                                     "source: {kind: fasta, paths: [a.fa], alowed_hosts: []}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    msg = str(err.value)
    assert "trian: unknown key (did you mean 'train'?)" in msg
    assert "split.valid_fractoin: unknown key (did you mean 'valid_fraction'?)" in msg
    assert "source.alowed_hosts: unknown key (did you mean 'allowed_hosts'?)" in msg and "[override" not in msg


def test_a_relative_workdir_in_a_file_is_relative_to_the_file(tmp_path, monkeypatch):
    """Not to wherever `plm` was started; one given with --set is relative to the working directory, as typed.
    The config hash does not depend on where the file lies."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "c.yaml").write_text("name: x\nworkdir: runs/w\n")
    monkeypatch.chdir(tmp_path / "b")
    cfg = load_config(tmp_path / "a" / "c.yaml")
    assert cfg.workdir_path == tmp_path / "a" / "runs" / "w" and cfg.lineage_path.parent == cfg.workdir_path
    assert load_config("c.yaml").workdir_path == tmp_path / "b" / "runs" / "w"
    assert load_config(tmp_path / "a" / "c.yaml", ["workdir=here"]).workdir_path == tmp_path / "b" / "here"
    assert load_config(tmp_path / "a" / "c.yaml").hash() == load_config("c.yaml").hash()
    assert load_config(ROOT / "configs" / "demo.yaml").workdir_path == ROOT / "demo_work"


def test_a_release_membership_must_be_a_file_of_the_uniref_source():
    level = ("cluster.levels=[{name: u50, min_seq_id: 0.5, method: uniref, "
             "membership: release:uniref50/uniref50.xml.gz}]")
    with pytest.raises(ConfigError, match="add 'uniref50/uniref50.xml.gz' to source.files"):
        load_config(None, [level])
    with pytest.raises(ConfigError, match="is not <database>/<file name>"):
        load_config(None, ["source={kind: uniref, files: [../etc/passwd]}"])
    with pytest.raises(ConfigError, match="method uniref needs membership"):
        load_config(None, ["cluster.levels=[{name: u50, min_seq_id: 0.5, method: uniref}]"])
    cfg = load_config(None, [level, "source={kind: uniref, database: uniref90, files: [uniref50/uniref50.xml.gz]}"])
    assert cfg.source.files == ["uniref50/uniref50.xml.gz"]
