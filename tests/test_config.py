"""Config validation: bad configs fail before any work, naming the file and the field."""

import pytest

from rayft.cli import main
from rayft.config import ConfigError, load_config, parse_config

GOOD = {"name": "support", "model": {"base": "/models/base"}}


def test_minimal_config_gets_defaults():
    config = parse_config(GOOD)
    assert config.train.method == "lora"
    assert config.train.deepspeed.zero_stage == 2
    assert config.data.split.train == 0.8


@pytest.mark.parametrize(
    "patch, field, words",
    [
        ({"train": {"lora": {"r": -1}}}, "train.lora.r", "greater than 0"),
        ({"train": {"lr": 0.1}}, "train.lr", "unknown field"),
        ({"train": {"epochs": 0}}, "train.epochs", "positive integer or 'auto'"),
        ({"train": {"deepspeed": {"zero_stage": 1}}}, "train.deepspeed.zero_stage", ""),
        ({"train": {"deepspeed": {"offload_params": True}}}, "train.deepspeed", "offload_params needs zero_stage 3"),
        ({"data": {"split": {"train": 0.9, "val": 0.1, "test": 0.1}}}, "data.split", "must be 1.0"),
        ({"data": {"label_regex": "Category: \\w+"}}, "data.label_regex", "exactly one capture group"),
        ({"data": {"label_regex": "Category: (\\w+"}}, "data.label_regex", "not a valid regular expression"),
        ({"serve": {"port": 70000}}, "serve.port", "less than 65536"),
    ],
)
def test_bad_field_is_named(patch, field, words):
    data = {**GOOD, **patch}
    with pytest.raises(ConfigError) as error:
        parse_config(data, "my.yaml")
    message = str(error.value)
    assert message.startswith("my.yaml: invalid config")
    assert f"  {field}" in message and words in message


def test_missing_base_model_is_named():
    with pytest.raises(ConfigError, match=r"model: Field required"):
        parse_config({"name": "x"})


def test_environment_variables_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYFT_HOME", str(tmp_path))
    path = tmp_path / "c.yaml"
    path.write_text('name: a\nmodel: {base: "${RAYFT_HOME}/m"}\n')
    assert load_config(path).model.base == f"{tmp_path}/m"


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)


def test_cli_rejects_bad_config_before_any_work(tmp_path, capsys, monkeypatch):
    import rayft.training.trainer

    def no_work(*args, **kwargs):
        raise AssertionError("training started on an invalid config")

    monkeypatch.setattr(rayft.training.trainer, "train", no_work)
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\nmodel: {base: /nowhere}\ntrain: {batch_size: -4}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: invalid config" in err and "train.batch_size" in err


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--label-regex", "(a)(b)"], "label_regex: Value error, label_regex must have exactly one capture group"),
        ([], "notes.csv: unknown file type '.csv'"),
    ],
)
def test_data_prepare_flags_and_inputs_are_refused_with_a_message(tmp_path, capsys, flags, words):
    (tmp_path / "notes.csv").write_text("a,b\n")
    assert main(["data", "prepare", str(tmp_path / "notes.csv"), "--out", str(tmp_path / "out"), *flags]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
