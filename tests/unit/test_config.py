from pathlib import Path

import pytest
import yaml

from crypson.config import ConfigError, deep_merge, load_config, parse_config, section_params

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("data", "prepare", "validate", "cgan", "vae", "classifier", "evaluate", "attack", "promote", "cipher",
            "tracking", "device", "distributed")


def test_shipped_params_and_presets_are_valid():
    config = load_config(REPO / "params.yaml")
    assert config.data.source == "glyphs"
    assert config.vae.latent_dim == 8 and config.vae.kl_weight == 0.7
    tiny = load_config(REPO / "params.yaml", [REPO / "presets" / "tiny.yaml"])
    assert tiny.cgan.epochs == 2 and tiny.vae.latent_dim == 8  # untouched keys keep their value
    report = load_config(REPO / "params.yaml", [REPO / "presets" / "report.yaml"])
    assert report.cgan.discriminator_hidden == (2048, 2048, 1024, 512)
    assert report.data.source == "emnist"


def test_code_defaults_equal_params_yaml():
    """params.yaml is the single source: deleting a key from it must not change the run."""
    shipped = section_params(load_config(REPO / "params.yaml"), *SECTIONS)
    defaults = section_params(parse_config({}), *SECTIONS)
    differing = {key: (defaults.get(key), value) for key, value in shipped.items() if defaults.get(key) != value}
    assert not differing, f"config.py default != params.yaml value (default, params.yaml): {differing}"
    assert set(defaults) == set(shipped)
    assert parse_config({}).seed == load_config(REPO / "params.yaml").seed
    from crypson.cipher.codec import DEFAULT_CANDIDATES  # the library's default for callers without a Config

    assert DEFAULT_CANDIDATES == load_config(REPO / "params.yaml").cipher.candidates


def test_a_key_deleted_from_params_keeps_the_default_run(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["vae"]["lr"], raw["cgan"]["conditioning"], raw["cipher"]["candidates"]
    trimmed = tmp_path / "params.yaml"
    trimmed.write_text(yaml.safe_dump(raw))
    assert load_config(trimmed) == load_config(REPO / "params.yaml")


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as error:
        parse_config({"vae": {"lrr": 0.1}})
    message = str(error.value)
    assert "unknown key 'vae.lrr'" in message
    assert "lr" in message and "kl_weight" in message


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown key 'vea'.*allowed keys here:.*vae"):
        parse_config({"vea": {}})


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"data": {"source": "mnist"}}, "data.source: Input should be 'glyphs' or 'emnist' (got 'mnist')"),
        ({"vae": {"lr": -1}}, "vae.lr: Input should be greater than 0 (got -1)"),
        ({"cgan": {"epochs": "many"}}, "cgan.epochs"),
        ({"data": {"split": "everything"}}, "data.split"),
        ({"device": "tpu"}, "device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"data": {"glyphs": {"scale_range": [1.2, 0.8]}}}, "scale_range"),
        ({"distributed": {"nodes": 0}}, "distributed.nodes: Input should be greater than or equal to 1 (got 0)"),
        ({"distributed": {"gpus_per_node": 17}}, "distributed.gpus_per_node: Input should be less than or equal to 16"),
        ({"distributed": {"runtime": "mpi-distributed"}},
         "distributed.runtime: Input should be 'torch-distributed' (got 'mpi-distributed')"),
        ({"distributed": {"nodes": 3}}, "cgan.batch_size=128 does not divide by distributed.nodes x gpus_per_node "
                                        "= 3 x 1 = 3 processes"),
        ({"distributed": {"gpus_per_node": 2, "sync_batchnorm": True}, "device": "cpu"},
         "distributed.sync_batchnorm=true needs CUDA"),
    ],
)
def test_bad_values_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert fragment in str(error.value)


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        parse_config({"vae": {"lr": 0}, "cgan": {"batch_size": 0}})
    assert "vae.lr" in str(error.value) and "cgan.batch_size" in str(error.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_deep_merge_and_section_params():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 9}}) == {"a": {"b": 1, "c": 9}, "d": 3}
    flat = section_params(parse_config({}), "vae")
    assert flat["vae.latent_dim"] == 8
    assert flat["vae.channels"] == [32, 64, 128, 256]
    assert not any(key.startswith("cgan.") for key in flat)


def test_config_knows_exactly_the_registered_schemes_and_their_settings():
    from typing import get_args

    from crypson.cipher.masks import MASK_SCHEMES, MASK_SETTINGS
    from crypson.config import CipherConfig

    assert get_args(CipherConfig.model_fields["scheme"].annotation) == tuple(MASK_SCHEMES)
    settings = parse_config({"cipher": {"gaussian_sigma": 2.5, "modular_range": 3.0}}).cipher.scheme_settings
    assert settings == {"gaussian_sigma": 2.5, "modular_range": 3.0} and tuple(settings) == MASK_SETTINGS
    for name in MASK_SCHEMES:
        assert parse_config({"cipher": {"scheme": name}}).cipher.scheme == name


def test_config_refuses_an_unknown_scheme_naming_it_and_the_valid_ones():
    with pytest.raises(ConfigError) as refused:
        parse_config({"cipher": {"scheme": "rot13"}})
    message = str(refused.value)
    assert "cipher.scheme" in message and "'rot13'" in message
    for name in ("report", "keyed-timestep", "keyed-gaussian", "keyed-modular"):
        assert f"'{name}'" in message


def test_distributed_topology_is_the_product_and_one_process_by_default():
    assert parse_config({}).distributed.processes == 1
    topology = parse_config({"distributed": {"nodes": 2, "gpus_per_node": 4, "sync_batchnorm": True}}).distributed
    assert (topology.processes, topology.sync_batchnorm, topology.runtime) == (8, True, "torch-distributed")
