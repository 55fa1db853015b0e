"""Anonymisation (data.anonymize, crossfuse anonymize): personal data replaced in text, faces hidden."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crossfuse.cli.main import main
from crossfuse.config.io import parse_config
from crossfuse.config.schema import AnonymizeConfig
from crossfuse.data.anonymize import Finding, TextAnonymizer, find_faces, hide_faces, redact
from crossfuse.engine.pipeline import train
from crossfuse.engine.predictor import Predictor
from crossfuse.errors import ConfigError, DataError
from tests.conftest import make_items, tiny_config

# sentences with known personal data: (text, the values that must go, the types they must become)
KNOWN = [
    ("Please call me at +1 (415) 555-0132 or write to maria.garcia@example.com.",
     ["+1 (415) 555-0132", "maria.garcia@example.com"], ["PHONE_NUMBER", "EMAIL_ADDRESS"]),
    ("Card 4111 1111 1111 1111 was charged; SSN 219-09-9999 on file.",
     ["4111 1111 1111 1111", "219-09-9999"], ["CREDIT_CARD", "US_SSN"]),
    ("Born 12/03/1985, lives at 221 Baker Street.", ["12/03/1985", "221 Baker Street"],
     ["DATE_TIME", "STREET_ADDRESS"]),
    ("See https://clinic.example.org/records?id=7 from 10.0.12.7, IBAN GB82 WEST 1234 5698 7654 32.",
     ["https://clinic.example.org/records?id=7", "10.0.12.7", "GB82 WEST 1234 5698 7654 32"],
     ["URL", "IP_ADDRESS", "IBAN_CODE"]),
    ("Dr. Alan Turing signed the form.", ["Alan Turing"], ["PERSON"]),
]
PLAIN = "The scan of the left knee shows 3 small lesions, 2.5 mm across; follow up in six weeks."


@pytest.mark.parametrize("detector", ["regex", "presidio"])
def test_known_personal_data_is_replaced_by_typed_placeholders(detector):
    anonymize = TextAnonymizer(AnonymizeConfig(detector=detector))
    for text, values, types in KNOWN:
        out, counts = anonymize(text)
        for value in values:
            assert value not in out, (detector, text, out)
        for entity in types:
            assert f"<{entity}>" in out or detector == "presidio", (text, out)
        assert sum(counts.values()) >= len(values) or detector == "presidio"
    assert anonymize(PLAIN) == (PLAIN, {}) or detector == "presidio"
    # presidio finds bare names (spaCy), which patterns cannot
    if detector == "presidio":
        out, counts = anonymize("Maria Garcia was admitted on Monday with a fever.")
        assert "Maria" not in out and counts.get("PERSON") == 1
        out, _ = anonymize(KNOWN[0][0])
        assert "<PHONE_NUMBER>" in out and "<EMAIL_ADDRESS>" in out


def test_an_anonymised_text_stays_as_it_is_and_overlaps_keep_the_longest():
    anonymize = TextAnonymizer(AnonymizeConfig(detector="regex"))
    out, _ = anonymize(KNOWN[0][0])
    assert anonymize(out) == (out, {})
    text = "mail bob@site.example.com"
    kept, counts = redact(text, [Finding(5, 25, "EMAIL_ADDRESS"), Finding(9, 25, "URL", 0.5)])
    assert kept == "mail <EMAIL_ADDRESS>" and counts == {"EMAIL_ADDRESS": 1}


def test_entities_narrow_what_is_replaced():
    anonymize = TextAnonymizer(AnonymizeConfig(detector="regex", entities=["EMAIL_ADDRESS"]))
    out, counts = anonymize(KNOWN[0][0])
    assert "<EMAIL_ADDRESS>" in out and "+1 (415) 555-0132" in out and counts == {"EMAIL_ADDRESS": 1}
    with pytest.raises(ConfigError, match="unknown 'NAME'"):
        parse_config({"data": {"anonymize": {"entities": ["NAME"]}}})


def face_image():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut(), skimage_data.chelsea()  # a face; a cat


def test_faces_are_hidden_so_the_detector_no_longer_finds_them():
    face, cat = face_image()
    assert len(find_faces(face)) == 1 and find_faces(cat) == []
    blurred, n = hide_faces(face, "blur")
    assert n == 1 and find_faces(blurred) == []
    (x, y, w, h), = find_faces(face)
    region = blurred[y:y + h, x:x + w].astype(float)
    assert np.abs(np.diff(region, axis=1)).mean() < 0.25 * np.abs(np.diff(face[y:y + h, x:x + w].astype(float),
                                                                           axis=1)).mean()
    assert np.array_equal(blurred[:, :x - 30], face[:, :x - 30])  # the rest of the image is untouched
    boxed, _ = hide_faces(face, "box")
    assert boxed[y + h // 2, x + w // 2].sum() == 0
    untouched, n = hide_faces(cat, "blur")
    assert n == 0 and untouched is cat


def patient_manifest(root):
    face, cat = face_image()
    (root / "img").mkdir(parents=True)
    Image.fromarray(face).save(root / "img" / "face.jpg")
    Image.fromarray(cat).save(root / "img" / "cat.png")
    df = pd.DataFrame({"scan": ["img/face.jpg", "img/cat.png", "img/cat.png"],
                       "note": [KNOWN[0][0], PLAIN, None], "label": ["a", "b", "a"]})
    df.to_csv(root / "patients.csv", index=False)
    return root / "patients.csv"


def test_the_anonymize_command_writes_a_new_manifest_files_and_a_report_without_values(tmp_path, capsys):
    manifest = patient_manifest(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["anonymize", str(manifest), "--out", str(out), "--detector", "regex", "--exclude", "label"]) == 0
    printed = capsys.readouterr().out
    assert "note (text, regex): 1 of 3 cells changed; EMAIL_ADDRESS 1, PHONE_NUMBER 1" in printed
    assert "1 face(s) hidden in 1 of 3 images" in printed
    df = pd.read_csv(out / "patients.csv")
    assert df["note"][0] == "Please call me at <PHONE_NUMBER> or write to <EMAIL_ADDRESS>."
    assert df["note"][1] == PLAIN and pd.isna(df["note"][2]) and list(df["label"]) == ["a", "b", "a"]
    assert find_faces(np.asarray(Image.open(out / "img" / "face.jpg").convert("RGB"))) == []
    assert (out / "img" / "cat.png").read_bytes() == (manifest.parent / "img" / "cat.png").read_bytes()
    report = pd.read_csv(out / "anonymize_report.csv")
    assert report.to_dict("records") == [
        {"row": 1, "column": "note", "kind": "text", "replaced": "EMAIL_ADDRESS=1;PHONE_NUMBER=1"},
        {"row": 1, "column": "scan", "kind": "image", "replaced": "faces=1"}]
    summary = json.loads((out / "anonymize_report.json").read_text())
    assert summary["columns"]["scan"] == {"kind": "image", "images": 3, "images_changed": 1, "faces": 1}
    everything = (out / "anonymize_report.csv").read_text() + (out / "anonymize_report.json").read_text()
    assert "maria" not in everything.lower() and "555" not in everything
    # a second run does not overwrite unasked; --out may not hold the input
    assert main(["anonymize", str(manifest), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["anonymize", str(manifest), "--out", str(tmp_path)]) == 2


def test_a_missing_image_names_row_and_column_and_writes_nothing(tmp_path):
    from crossfuse.data.anonymize import anonymize_manifest

    manifest = patient_manifest(tmp_path / "in")
    (manifest.parent / "img" / "cat.png").unlink()
    with pytest.raises(DataError, match=r"row 2, column 'scan': file not found") as err:
        anonymize_manifest(manifest, tmp_path / "out", AnonymizeConfig(detector="regex"), image_columns=["scan"])
    assert "row 3, column 'scan'" in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_training_with_data_anonymize_replaces_text_everywhere_the_model_reads_it(tmp_path):
    manifest = make_items(tmp_path / "d", n=36)
    df = pd.read_csv(manifest)
    df["caption"] = [f"{c}; contact {n}@mail.example.com" for c, n in zip(df["caption"], df["id"])]
    df.to_csv(manifest, index=False)
    cfg = tiny_config(manifest, tmp_path / "run")
    cfg["data"]["anonymize"] = {"detector": "regex"}
    result = train(parse_config(cfg))
    assert result.metrics["anonymize"]["caption"] == {"kind": "text", "detector": "regex", "cells_changed": 36,
                                                      "entities": {"EMAIL_ADDRESS": 36}}
    assert result.metrics["anonymize"]["image"] == {"kind": "image", "faces": "blur"}
    processors = json.loads((tmp_path / "run" / "model" / "processors.json").read_text())
    assert processors["image"]["params"]["faces"] == "blur"
    # the loaded model anonymises as its training did: a raw and a pre-anonymised text predict alike
    predictor = Predictor.load(tmp_path / "run" / "model")
    assert predictor.anonymize.detector == "regex"
    raw = predictor.predict_frame(df.head(6), manifest.parent)
    clean = df.head(6).assign(caption=[c.split(";")[0] + "; contact <EMAIL_ADDRESS>" for c in df["caption"][:6]])
    scored = predictor.predict_frame(clean, manifest.parent)
    probs = [c for c in raw.columns if c.startswith("prob")]
    assert probs and np.allclose(raw[probs].to_numpy(), scored[probs].to_numpy())


def test_anonymize_columns_must_be_read_by_a_modality_of_that_kind(tmp_path):
    cfg = tiny_config(make_items(tmp_path / "d", n=12), tmp_path / "run", epochs=1)
    cfg["data"]["anonymize"] = {"text_columns": ["size"]}
    with pytest.raises(ConfigError, match="'data.anonymize.text_columns' names 'size', which no text modality reads"):
        train(parse_config(cfg))
