"""Prompt uploads over HTTP: formats, every kind of bad upload, idempotency, listing, image, retire."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest_broker import make_settings
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from dso.api.app import create_app
from dso.broker.prompt_stats import PromptStats
from dso.broker import Broker
from dso.broker.prompts import prompt_id_for
from dso.config import ApiSettings, Settings
from dso.telemetry import LoopMetrics

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 256 * 1024


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as opened:
        yield opened


@pytest.fixture()
def metrics() -> LoopMetrics:
    return LoopMetrics(CollectorRegistry())


@pytest.fixture()
def client(broker: Broker, metrics: LoopMetrics) -> Iterator[TestClient]:
    api = ApiSettings(max_upload_bytes=MAX_UPLOAD, max_image_pixels=1024 * 1024, max_files_per_request=4)
    app = create_app(Settings(broker=broker.settings, api=api), broker, metrics=metrics, environ={"DSO_API_TOKEN": TOKEN})
    with TestClient(app) as test_client:
        yield test_client


def encoded(fmt: str, mode: str = "RGBA", size: tuple[int, int] = (48, 40), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGBA": 4, "RGB": 3}[mode]
    pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[:, : size[0] // 3, 3] = 0  # a transparent band: the alpha mask must survive
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid, tiny PNG that declares width x height 1-bit pixels (all zero): a decompression bomb.

    ``rows``: how many rows of data to actually include (default all; fewer makes a header-only bomb).
    """
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 1000) for _ in range((height if rows is None else rows) // 1000)]
    idat = b"".join(chunks) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def upload(client: TestClient, *files: tuple[str, bytes], field: str = "images", headers: dict | None = None):
    return client.post(
        "/v1/prompts", files=[(field, (name, data, "application/octet-stream")) for name, data in files],
        headers=AUTH if headers is None else headers,
    )


def stored_ids(broker: Broker) -> list[str]:
    return broker.prompts.all()


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("JPEG", "RGB"), ("WEBP", "RGBA")])
def test_each_format_uploads_and_round_trips(client: TestClient, broker: Broker, fmt: str, mode: str) -> None:
    data = encoded(fmt, mode)
    response = upload(client, (f"x.{fmt.lower()}", data))
    assert response.status_code == 201, response.text
    body = response.json()
    [prompt] = body["prompts"]
    assert prompt["id"] == prompt_id_for(data) and prompt["created"] is True
    assert (prompt["format"], prompt["mode"], prompt["width"], prompt["height"]) == (fmt, mode, 48, 40)
    assert prompt["has_alpha"] is (mode == "RGBA")
    assert broker.prompts.active() == [prompt["id"]]
    image = client.get(f"/v1/prompts/{prompt['id']}/image")
    assert image.status_code == 200 and image.content == data  # stored byte for byte: alpha kept
    assert image.headers["content-type"] == {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    if mode == "RGBA":
        assert Image.open(io.BytesIO(image.content)).getchannel("A").getextrema()[0] == 0


def test_several_images_in_one_request_and_duplicates_get_the_same_id(client: TestClient, broker: Broker) -> None:
    a, b = encoded("PNG", seed=1), encoded("PNG", seed=2)
    first = upload(client, ("a.png", a), ("b.png", b), ("a-again.png", a))
    assert first.status_code == 201
    ids = [p["id"] for p in first.json()["prompts"]]
    assert ids[0] == ids[2] != ids[1]
    assert [p["created"] for p in first.json()["prompts"]] == [True, True, False]
    again = upload(client, ("renamed.png", a))
    assert again.status_code == 200 and again.json()["prompts"][0]["id"] == ids[0]
    assert again.json()["created"] == 0 and again.json()["duplicates"] == 1
    assert sorted(stored_ids(broker)) == sorted({ids[0], ids[1]})


REJECTIONS = {
    "empty body": (None, 422, "empty request body"),
    "text renamed png": ([("notes.png", b"this is not an image\n" * 20)], 415, "not a readable image"),
    "truncated png": ([("cut.png", encoded("PNG", size=(96, 96))[:-300])], 422, "corrupt image"),
    "pixel bomb": ([("bomb.png", png_bomb(20000, 20000))], 413, "decompression bomb"),
    "huge pixel bomb": ([("bomb.png", png_bomb(100000, 100000, rows=0))], 413, f"more than the limit of {1024 * 1024}"),
    "1x1 png": ([("dot.png", encoded("PNG", size=(1, 1)))], 422, "smaller than the minimum of 16 pixels a side"),
    "thin png": ([("line.png", encoded("PNG", size=(200, 4)))], 422, "api.min_image_side"),
    "oversized file": ([("big.png", b"\x89PNG" + b"\x00" * (MAX_UPLOAD + 1))], 413, "larger than the limit"),
    "gif not accepted": ([("anim.gif", None)], 415, "GIF images are not accepted"),
    "empty file": ([("zero.png", b"")], 422, "is empty"),
    "too many files": ([(f"{i}.png", b"x") for i in range(5)], 422, "too many files"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_uploads_get_the_right_status_and_store_nothing(client: TestClient, broker: Broker, case: str) -> None:
    files, status, message = REJECTIONS[case]
    good = encoded("PNG", seed=9)  # rides along: a bad file must refuse the whole request
    if files is None:
        response = client.post("/v1/prompts", content=b"", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"})
    else:
        if case == "gif not accepted":
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8)).save(buffer, format="GIF")
            files = [("anim.gif", buffer.getvalue())]
        response = upload(client, ("good.png", good), *files) if case != "too many files" else upload(client, *files)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert "Image size" not in response.json()["detail"]  # our documented limit, never Pillow's text
    assert stored_ids(broker) == []


def test_oversized_body_is_refused_from_content_length_before_reading(client: TestClient, broker: Broker) -> None:
    response = client.post(
        "/v1/prompts", content=b"--x--\r\n",
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(10**9)},
    )
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]
    assert stored_ids(broker) == []


def test_wrong_field_and_wrong_content_type(client: TestClient, broker: Broker) -> None:
    wrong = upload(client, ("a.png", encoded("PNG")), field="file")
    assert wrong.status_code == 422 and "unexpected form field 'file'" in wrong.json()["detail"]
    as_json = client.post("/v1/prompts", json={"images": []}, headers=AUTH)
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
    truncated = client.post(
        "/v1/prompts",
        content=b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n\x89PNG',
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert truncated.status_code == 422 and "closing boundary" in truncated.json()["detail"]
    assert stored_ids(broker) == []


def test_rejections_and_uploads_are_counted(client: TestClient, metrics: LoopMetrics) -> None:
    upload(client, ("a.png", encoded("PNG", seed=3)))
    upload(client, ("a.png", encoded("PNG", seed=3)))
    upload(client, ("t.png", b"text"))
    assert metrics.prompt_uploads.labels("created")._value.get() == 1
    assert metrics.prompt_uploads.labels("duplicate")._value.get() == 1
    assert metrics.prompt_uploads.labels("rejected")._value.get() == 1


def test_list_get_and_retire(client: TestClient, broker: Broker) -> None:
    ids = [upload(client, (f"{i}.png", encoded("PNG", seed=10 + i))).json()["prompts"][0]["id"] for i in range(5)]
    page = client.get("/v1/prompts", params={"limit": 2})
    assert page.status_code == 200
    body = page.json()
    assert [p["id"] for p in body["items"]] == ids[:2] and body["total"] == 5 and body["next_offset"] == 2
    last = client.get("/v1/prompts", params={"limit": 2, "offset": 4}).json()
    assert [p["id"] for p in last["items"]] == ids[4:] and last["next_offset"] is None
    assert client.get("/v1/prompts", params={"limit": 10_000}).status_code == 422

    PromptStats.for_broker(broker).record(ids[0], "stable", 3)
    PromptStats.for_broker(broker).record(ids[0], "unstable", 1)
    PromptStats.for_broker(broker).record(ids[0], "invalid", 1)
    info = client.get(f"/v1/prompts/{ids[0]}").json()
    assert info["stability"] == {"labelled": 5, "stable": 3, "unstable": 1, "invalid": 1, "stability_rate": 0.75}
    assert info["metadata"]["filename"] == "0.png" and info["active"] is True

    unauthorised = client.delete(f"/v1/prompts/{ids[0]}")
    assert unauthorised.status_code == 401 and ids[0] in broker.prompts.active()
    retired = client.delete(f"/v1/prompts/{ids[0]}", headers=AUTH)
    assert retired.status_code == 200 and retired.json() == {"id": ids[0], "retired": True}
    assert ids[0] not in broker.prompts.active()
    assert client.delete(f"/v1/prompts/{ids[0]}", headers=AUTH).json()["retired"] is False
    assert client.get("/v1/prompts").json()["total"] == 4
    assert client.get("/v1/prompts", params={"status": "all"}).json()["total"] == 5
    assert client.get(f"/v1/prompts/{ids[0]}").json()["active"] is False

    unknown = "0" * 64
    assert client.get(f"/v1/prompts/{unknown}").status_code == 404
    assert client.delete(f"/v1/prompts/{unknown}", headers=AUTH).status_code == 404
    assert client.get("/v1/prompts/not-a-hash").status_code == 422


def test_prompt_image_etag_and_304(client: TestClient) -> None:
    data = encoded("PNG", seed=20)
    prompt_id = upload(client, ("a.png", data)).json()["prompts"][0]["id"]
    first = client.get(f"/v1/prompts/{prompt_id}/image")
    assert first.headers["etag"] == f'"{prompt_id}"'
    cached = client.get(f"/v1/prompts/{prompt_id}/image", headers={"If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    other = client.get(f"/v1/prompts/{prompt_id}/image", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200 and other.content == data


def test_prompts_stored_by_the_loop_are_served_with_their_media_type(client: TestClient, broker: Broker) -> None:
    data = encoded("PNG", seed=30)
    prompt_id = broker.prompts.add(data, {"source": "default", "family": "biped"}).prompt_id  # no content_type
    image = client.get(f"/v1/prompts/{prompt_id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content == data
    info = client.get(f"/v1/prompts/{prompt_id}").json()
    assert info["metadata"]["source"] == "default" and info["metadata"]["family"] == "biped"
