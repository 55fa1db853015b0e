"""The REST API through the ASGI app: predictions as `crossfuse predict` makes them, for every
subset of modalities; search both ways; every error status with the field that is wrong; keys."""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from crossfuse.engine import Predictor  # noqa: E402
from crossfuse.serve import create_app  # noqa: E402
from crossfuse.serve.security import ApiKeys, read_keys  # noqa: E402

from conftest import start_serve  # noqa: E402

KEY = "k" * 20 + "-test-key"


@pytest.fixture(scope="module")
def client(served):
    app = create_app(served["fusion"], served["indexes"])
    with TestClient(app) as c:
        yield c


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def item(served, row: int, modalities=("image", "tabular", "text")) -> dict:
    df = pd.read_csv(served["items"])
    r = df.iloc[row]
    fields = {}
    if "image" in modalities:
        fields["image"] = b64(served["items"].parent / r["image"])
    if "tabular" in modalities:
        fields.update(x=float(r["x"]), size=r["size"])
    if "text" in modalities:
        fields["caption"] = r["caption"]
    return fields


def test_model_description_lists_modalities_fields_and_indexes(client):
    info = client.get("/v1/model").json()
    assert info["kind"] == "fusion" and info["task"] == "classification" and info["classes"] == ["cat", "dog", "fish"]
    assert info["fusion"] == "attention"
    fields = {f["name"]: f for m in info["modalities"] for f in m["fields"]}
    assert fields["image"]["type"] == "file" and fields["x"]["type"] == "number"
    assert fields["size"] == {"name": "size", "type": "category", "values": ["l", "m", "s"]}
    assert set(info["input_schema"]["properties"]) == {"image", "x", "size", "caption"}
    assert {ix["name"]: ix["modality"] for ix in info["indexes"]} == {"pics": "image", "captions": "text"}


def test_served_predictions_equal_crossfuse_predict_for_every_subset_of_modalities(client, served):
    """Each non-empty subset of the three modalities, as the server and as Predictor on a manifest
    whose other columns are empty (the same presence masks)."""
    pred = Predictor.load(served["fusion"])
    df = pd.read_csv(served["items"]).iloc[[0, 1, 2]].reset_index(drop=True)
    mods = ("image", "tabular", "text")
    columns = {"image": ["image"], "tabular": ["x", "size"], "text": ["caption"]}
    for k in (1, 2, 3):
        for subset in itertools.combinations(mods, k):
            part = df.copy()
            for m in set(mods) - set(subset):
                part[columns[m]] = None
            expected = pred.predict_frame(part, served["items"].parent, on_bad_item="missing")
            body = {"inputs": [item(served, r, subset) for r in range(3)]}
            res = client.post("/v1/predict", json=body)
            assert res.status_code == 200, res.text
            got = res.json()["predictions"]
            for r in range(3):
                assert got[r]["present"] == {m: m in subset for m in mods}
                assert got[r]["label"] == expected["prediction"][r], (subset, r)
                for label in ("cat", "dog", "fish"):
                    assert got[r]["probabilities"][label] == pytest.approx(expected[f"proba_{label}"][r], abs=1e-5)
                for m in mods:  # attention fusion gives weights; an absent modality gets none
                    w = got[r]["weights"][m]
                    assert (w == pytest.approx(0.0, abs=1e-6)) if m not in subset else w > 0
                assert got[r]["used"] == got[r]["present"]  # no modality dropout: the trust gate is off


def same(a: dict, b: dict) -> bool:
    """Two predictions alike up to float rounding (a batch of another size sums in another order)."""
    return a["label"] == b["label"] and a["present"] == b["present"] and all(
        a["probabilities"][k] == pytest.approx(v, abs=1e-6) for k, v in b["probabilities"].items())


def test_one_item_list_multipart_and_base64_data_url_agree(client, served):
    one = client.post("/v1/predict", json={"inputs": item(served, 4)}).json()["predictions"]
    listed = client.post("/v1/predict", json={"inputs": [item(served, 5), item(served, 4)]}).json()["predictions"]
    assert len(one) == 1 and len(listed) == 2 and same(listed[1], one[0])
    assert listed[0]["probabilities"] != listed[1]["probabilities"]
    fields = item(served, 4)
    png = base64.b64decode(fields.pop("image"))
    form = client.post("/v1/predict", data={k: str(v) for k, v in fields.items()},
                       files={"image": ("whatever.bin", png, "application/octet-stream")}).json()["predictions"]
    assert form[0]["label"] == one[0]["label"]
    assert form[0]["probabilities"]["cat"] == pytest.approx(one[0]["probabilities"]["cat"], abs=1e-6)
    fields["image"] = "data:image/png;base64," + base64.b64encode(png).decode()
    url = client.post("/v1/predict", json={"inputs": fields}).json()["predictions"]
    assert same(url[0], one[0])


def test_search_text_to_image_and_image_to_text(client, served):
    res = client.post("/v1/search", json={"index": "pics", "query": "red above blue", "top": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["modality"] == "text" and [h["rank"] for h in body["results"]] == [1, 2, 3, 4, 5]
    pairs = pd.read_csv(served["pairs"])
    captions = dict(zip(pairs["image"], pairs["caption"]))
    top = body["results"][0]
    assert captions[top["value"]] == "red above blue"  # the tiny model learns colour words
    assert top["value"].startswith("img/") and not top["value"].startswith("/")  # never the server's path
    assert body["results"][0]["score"] >= body["results"][-1]["score"]
    thumb = client.get(top["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (16, 16)
    # image -> text: the picture itself as an upload, against the caption index
    png = (served["pairs"].parent / top["value"]).read_bytes()
    res = client.post("/v1/search", data={"index": "captions", "top": "3"}, files={"file": ("q", png)})
    assert res.status_code == 200, res.text
    hits = res.json()["results"]
    assert res.json()["modality"] == "image" and hits[0]["value"] == "red above blue"
    assert "thumbnail" not in hits[0] or hits[0]["thumbnail"] is None
    # the same as JSON with base64
    same = client.post("/v1/search", json={"index": "captions", "top": 3, "file": base64.b64encode(png).decode()})
    assert same.json()["results"] == hits


def error(res, status: int, field=None, contains: str = ""):
    assert res.status_code == status, (res.status_code, res.text)
    body = res.json()
    assert body["field"] == field, body
    assert contains in body["error"], body
    assert "Traceback" not in res.text
    return body


def test_errors_name_the_field(client, served):
    post = lambda body: client.post("/v1/predict", json=body)  # noqa: E731
    error(post({"inputs": {"x": "abc"}}), 422, "x", "not a number")
    error(post({"inputs": {"x": True}}), 422, "x", "bool")
    error(client.post("/v1/predict", content=b'{"inputs": {"x": Infinity}}', headers={"content-type": "application/json"}),
          422, "x", "not a finite number")
    error(post({"inputs": {"x": 1e308}}), 422, "x", "out of range")  # its standardised value overflows float32
    error(post({"inputs": {"x": 1e30}}), 422, None, "output is not finite")  # fits float32, the network overflows
    error(post({"inputs": {"colour": "red"}}), 422, "colour", "unknown field")
    error(post({"inputs": {}}), 422, None, "gives no modality")
    error(post({"inputs": []}), 422, "inputs")
    error(post({"items": [{}]}), 422, "inputs")
    error(post({"inputs": [{"caption": "a"}, {"x": "?"}]}), 422, "x")
    assert post({"inputs": [{"caption": "a"}, {"x": "?"}]}).json()["item"] == 1
    error(post({"inputs": {"image": "***not base64***"}}), 422, "image", "base64")
    error(post({"inputs": {"caption": 12}}), 422, "caption", "text expected")
    error(client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}),
          422, None, "not valid JSON")
    error(post({"inputs": [{"caption": "a"}] * 257}), 413, "inputs", "at most 256")
    # 415: bytes that are not the modality's type, whatever the name says; a body of another type
    error(client.post("/v1/predict", files={"image": ("cat.png", b"just some text, not a picture")}), 415, "image",
          "not an image")
    error(client.post("/v1/predict", content=b"caption=a", headers={"content-type": "text/plain"}), 415,
          "Content-Type")
    # a truncated PNG is an image that cannot be decoded: 422
    png = (served["items"].parent / "img" / "0.png").read_bytes()
    error(client.post("/v1/predict", files={"image": ("a.png", png[: len(png) // 2])}), 422, "image", "cannot read")
    # search errors
    error(client.post("/v1/search", json={"index": "nope", "query": "x"}), 404, "index", "pics, captions")
    error(client.post("/v1/search", json={"index": "pics", "query": "x", "top": 0}), 422, "top")
    error(client.post("/v1/search", json={"index": "pics", "query": "  "}), 422, "query")
    error(client.post("/v1/search", json={"index": "pics", "query": "x", "colour": 1}), 422, "colour")
    error(client.post("/v1/search", data={"index": "pics"}, files={"file": ("q.png", b"RIFF....")}), 415, "file")
    error(client.get("/v1/items/pics/100000/thumbnail"), 404, "item")
    error(client.get("/v1/items/captions/0/thumbnail"), 404, "item", "not images")


def test_body_size_limit_is_413_before_the_body_is_read(served):
    app = create_app(served["fusion"], max_body_mb=0.01)
    with TestClient(app) as c:
        big = {"inputs": {"caption": "x" * 20_000}}
        error(c.post("/v1/predict", json=big), 413, None, "over the limit")
        # no Content-Length (a streamed body): cut off while reading
        res = c.post("/v1/predict", content=iter([b'{"inputs": {"caption": "', b"x" * 20_000, b'"}}']),
                     headers={"content-type": "application/json"})
        assert res.status_code == 413
        assert c.post("/v1/predict", json={"inputs": {"caption": "small"}}).status_code == 200


def test_decompression_bomb_is_refused_from_its_header(client, tmp_path):
    buf = io.BytesIO()
    Image.new("1", (9000, 8000)).save(buf, "PNG")  # 72 megapixels in a few kB
    assert len(buf.getvalue()) < 200_000
    error(client.post("/v1/predict", files={"image": ("bomb.png", buf.getvalue())}), 413, "image", "over the limit")


def test_uploads_are_deleted_after_each_request(client, served):
    upload_dir = client.app.state.service.upload_dir
    client.post("/v1/predict", json={"inputs": item(served, 0)})
    client.post("/v1/predict", files={"image": ("a.png", b"not a picture")})
    assert list(upload_dir.iterdir()) == []


def test_internal_errors_hide_the_trace(served, monkeypatch, caplog):
    app = create_app(served["fusion"])

    def broken(items):
        raise RuntimeError("secret detail")

    app.state.batcher.runners["predict"] = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        res = c.post("/v1/predict", json={"inputs": {"caption": "a"}})
    assert res.status_code == 500 and "secret" not in res.text and "reference" in res.json()["error"]
    assert "secret detail" in caplog.text  # logged on the server


def test_api_keys(served, tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# one per line\n{KEY}\n")
    monkeypatch.delenv("CROSSFUSE_API_KEYS", raising=False)
    keys = read_keys(keys_file)
    app = create_app(served["fusion"], api_keys=keys)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200  # liveness needs no key
        res = c.get("/v1/model")
        error(res, 401, "Authorization", "needs an API key")
        assert res.headers["www-authenticate"] == "Bearer"
        error(c.get("/v1/model", headers={"Authorization": "Bearer " + "x" * 25}), 403, "Authorization")
        assert c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/v1/predict", json={"inputs": {"caption": "a"}}, headers={"X-API-Key": KEY}).status_code == 200
        error(c.post("/v1/predict", json={"inputs": {"caption": "a"}}), 401, "Authorization")
    monkeypatch.setenv("CROSSFUSE_API_KEYS", "b" * 16 + ", " + "c" * 16)
    both = read_keys(keys_file)
    assert len(both) == 3 and both.check("c" * 16) and not both.check("d" * 16)
    assert not ApiKeys([]) and ApiKeys(["x" * 16])
    keys_file.write_text("short\n")
    with pytest.raises(Exception, match="shorter than 16"):
        read_keys(keys_file)


def test_a_retrieval_model_embeds_and_refuses_predict(served):
    app = create_app(served["retrieval"], {"pics": served["indexes"]["pics"]})
    with TestClient(app) as c:
        info = c.get("/v1/model").json()
        assert info["kind"] == "retrieval" and info["classes"] == []
        error(c.post("/v1/predict", json={"inputs": {"caption": "red above blue"}}), 409, None, "retrieval model")
        emb = c.post("/v1/embed", json={"inputs": [{"caption": "red above blue"}, {"caption": "blue above red"}]})
        vecs = [np.array(e["text"]) for e in emb.json()["embeddings"]]
        assert len(vecs[0]) == 16 and abs(np.linalg.norm(vecs[0]) - 1) < 1e-4 and not np.allclose(*vecs)
        hits = c.post("/v1/search", json={"index": "pics", "query": "red above blue", "top": 3}).json()["results"]
        assert len(hits) == 3
    fusion = create_app(served["fusion"])
    with TestClient(fusion) as c:
        error(c.post("/v1/embed", json={"inputs": {"caption": "a"}}), 409, None, "retrieval models")
        error(c.post("/v1/search", json={"index": "pics", "query": "a"}), 404, "index", "--index")


def test_a_bad_model_directory_fails_at_start(tmp_path):
    from crossfuse.errors import CrossfuseError

    with pytest.raises(CrossfuseError, match="not a crossfuse model directory"):
        create_app(tmp_path)


# ---- the command: security rules at start, TLS on 127.0.0.1 ---------------------------------------

def test_serve_refuses_other_hosts_without_tls_and_keys(served, capsys):
    from crossfuse.cli.main import main

    assert main(["serve", str(served["fusion"]), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "no TLS" in err and "API keys" in err and "--insecure" in err
    assert main(["serve", str(served["fusion"]), "--index", str(served["root"])]) == 2
    assert "not an index directory" in capsys.readouterr().err


@pytest.mark.slow
def test_tls_round_trip_with_a_self_signed_certificate(served):
    import ssl

    import httpx

    proc, port, lines = start_serve(served["fusion"], "--tls-self-signed",
                                    env={**os.environ, "CROSSFUSE_API_KEYS": KEY})
    try:
        cert = next(line.split()[-1] for line in lines if line.startswith("self-signed certificate"))
        fingerprint = next(line.split()[-1] for line in lines if "SHA-256 fingerprint" in line)
        assert len(fingerprint.split(":")) == 32
        assert Path(cert).is_file() and not (Path(cert).parent / "key.pem").exists()  # the key is in memory only
        ctx = ssl.create_default_context(cafile=cert)
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx) as c:
            assert c.get("/health").json()["status"] == "ok"
            res = c.post("/v1/predict", json={"inputs": {"caption": "whiskers purring"}},
                         headers={"Authorization": f"Bearer {KEY}"})
            assert res.status_code == 200 and res.json()["predictions"][0]["label"] in ("cat", "dog", "fish")
            assert c.get("/v1/model").status_code == 401
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by a verifying client
            httpx.get(f"https://127.0.0.1:{port}/health")
        old = ssl.create_default_context(cafile=cert)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises(httpx.ConnectError):  # TLS 1.2 at least
            httpx.get(f"https://127.0.0.1:{port}/health", verify=old)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_openapi_declares_the_error_statuses(client):
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "401", "403", "413", "415", "422"} <= set(responses)
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert json.dumps(spec).count("securitySchemes") == 1


def test_a_regression_model_serves_values(tmp_path):
    import yaml

    from conftest import make_items, tiny_config
    from crossfuse.cli.main import main

    cfg = tiny_config(make_items(tmp_path / "data", n=24), tmp_path / "run", epochs=2)
    cfg["data"].update(target="x", task="regression")
    cfg["modalities"]["tabular"]["columns"] = ["size"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(tmp_path / "r.yaml")]) == 0
    model = tmp_path / "run" / "model"
    expected = Predictor.load(model).predict_frame(pd.read_csv(tmp_path / "data" / "manifest.csv").head(2),
                                                   tmp_path / "data")["prediction"]
    df = pd.read_csv(tmp_path / "data" / "manifest.csv").head(2)
    inputs = [{"image": b64(tmp_path / "data" / r.image), "caption": r.caption, "size": r.size} for r in df.itertuples()]
    with TestClient(create_app(model)) as c:
        assert c.get("/v1/model").json()["task"] == "regression"
        got = c.post("/v1/predict", json={"inputs": inputs}).json()["predictions"]
    assert [g["label"] for g in got] == [None, None]
    assert [g["value"] for g in got] == pytest.approx(list(expected), abs=1e-5)


def test_slow_inference_times_out_with_504(served):
    app = create_app(served["fusion"], timeout_s=0.2)

    def slow(items):
        time.sleep(1.0)
        return [{} for _ in items]

    app.state.batcher.runners["predict"] = slow
    with TestClient(app) as c:
        error(c.post("/v1/predict", json={"inputs": {"caption": "a"}}), 504, None, "longer than 0.2 s")
