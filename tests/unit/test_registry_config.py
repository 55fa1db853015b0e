from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crossfuse.config import apply_overrides, load_config, parse_config
from crossfuse.config.schema import Component, ModalityConfig
from crossfuse.encoders import ENCODERS
from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS
from crossfuse.models import component_problems


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"Unknown fusion 'concatt'. Did you mean 'concat'\? Registered: attention"):
        FUSIONS.get("concatt")


def test_list_with_glob_and_build_drops_none():
    assert FUSIONS.names("*att*") == ["attention"]
    assert "resnet18" in ENCODERS.names("res*")
    enc = ENCODERS.build("small_cnn", channels=None, image_size=16)  # None keeps the default channels
    assert enc.output_dim == 256


def test_unknown_parameter_is_reported_with_suggestion():
    with pytest.raises(ConfigError, match="has no parameter 'chanels'. Did you mean 'channels'"):
        ENCODERS.build("small_cnn", chanels=[4])


def minimal(**over):
    raw = {"data": {"manifest": "m.csv"},
           "modalities": {"image": {"kind": "image", "columns": ["img"], "encoder": "small_cnn"}}}
    raw.update(over)
    return raw


def test_every_config_problem_is_reported_at_once():
    raw = minimal(train={"epochs": 0, "lr": -1, "optimiser": "sgd", "scheduler": "cosin"}, head={"dropout": 1.5})
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    text = str(info.value)
    for expected in ["Unknown key 'train.optimiser'. Did you mean 'optimizer'?",
                     "'train.scheduler' must be one of none, cosine, step. Got 'cosin'. Did you mean 'cosine'?"]:
        assert expected in text
    # modality kinds are a registry of the data layer: checked with the components, before any work
    cfg = parse_config(minimal())
    cfg.modalities["text"] = ModalityConfig("txt", ["a", "b"], Component("gru"))
    cfg.modalities["image"].columns = ["a", "b"]
    problems = component_problems(cfg)
    assert "'modalities.text.kind' must be one of image, text, audio, tabular. Got 'txt'. Did you mean 'text'?" \
        in problems
    assert "'modalities.image.columns' must name exactly one column for a modality of kind image" in problems
    raw = minimal(train={"epochs": 0, "lr": -1}, head={"dropout": 1.5})
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert len(info.value.problems) == 3
    assert "'train.epochs' must be an int >= 1. Got 0." in str(info.value)


def test_component_problems_cover_names_parameters_and_modality():
    cfg = parse_config(minimal(fusion={"name": "atention", "dimm": 3}))
    cfg.modalities["image"].encoder.name = "gru"
    problems = component_problems(cfg)
    assert any("'gru' encodes text, but modality 'image' is image" in p for p in problems)
    assert any("Unknown fusion 'atention'. Did you mean 'attention'?" in p for p in problems)


def test_overrides_parse_values_as_yaml():
    raw = apply_overrides(minimal(), ["train.epochs=3", "fusion.name=attention", "fusion.dim=32",
                                      "train.grad_clip=null", "modalities.image.encoder.channels=[4,8]"])
    cfg = parse_config(raw)
    assert cfg.train.epochs == 3 and cfg.train.grad_clip is None
    assert cfg.fusion.name == "attention" and cfg.fusion.params == {"dim": 32}
    assert cfg.modalities["image"].encoder.params == {"channels": [4, 8]}
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides(minimal(), ["train.epochs"])


def test_manifest_path_is_relative_to_the_config_file(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("a\n1\n")
    (tmp_path / "sub" / "c.yaml").write_text(yaml.safe_dump(minimal()))
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert Path(cfg.data.manifest) == tmp_path / "sub" / "m.csv"


def test_missing_config_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_every_kind_of_run_is_one_registered_task(tmp_path):
    import json

    from crossfuse.config.schema import Config, DataConfig
    from crossfuse.engine import TASKS, FusionTask, RetrievalTask, task_for
    from crossfuse.engine.run import task_for_model

    assert TASKS.names() == ["fusion", "retrieval"]
    assert isinstance(task_for(Config(data=DataConfig(task="retrieval"))), RetrievalTask)
    assert isinstance(task_for(Config()), FusionTask) and task_for(Config()) is not task_for(Config())  # per run
    (tmp_path / "config.json").write_text(json.dumps({"architecture": {"kind": "retrieval"}}))
    assert isinstance(task_for_model(tmp_path), RetrievalTask)
    assert isinstance(task_for_model(tmp_path / "missing"), FusionTask)  # its loader names what is missing


def test_a_new_modality_kind_is_its_processor_and_nothing_else(monkeypatch):
    import pandas as pd

    from crossfuse.data import infer_modalities
    from crossfuse.data import processors as registry
    from crossfuse.data.processors.base import FileProcessor

    class VideoProcessor(FileProcessor):
        kind, default_encoder, extensions, noun = "video", "small_cnn", (".mp4",), "video"

    monkeypatch.setitem(registry.PROCESSORS, "video", VideoProcessor)
    monkeypatch.setattr(registry, "FILE_KINDS", registry.FILE_KINDS + [VideoProcessor])
    df = pd.DataFrame({"clip": [f"c{i}.mp4" for i in range(6)], "n": range(6), "label": list("abcabc")})
    found = infer_modalities(df, ["label"])
    assert (found["video"].kind, found["video"].columns, found["video"].encoder.name) == ("video", ["clip"],
                                                                                          "small_cnn")
    assert found["tabular"].columns == ["n"]
