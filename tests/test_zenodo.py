"""Zenodo records (loopback imitation) and safe zip extraction."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
from imitations.zenodo import ZenodoImitation, make_png_zip

from gzmorph import archives, net
from gzmorph.archives import ArchiveError
from gzmorph.net import FetchError, HttpSettings
from gzmorph.sources import zenodo
from gzmorph.sources.gzdecals import zip_member
from gzmorph.sources.zenodo import RecordFile

RECORD = 4573248
FAST = HttpSettings(timeout_s=5.0, retries=3, backoff_s=0.01, backoff_max_s=0.05)
IAUNAMES = ["J094632.40+005103.6", "J094700.08+005146.5", "J101010.00-010101.0", "J000001.23+000002.3"]


def png(name: str) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + hashlib.sha256(name.encode()).digest() * 2000  # ~64 kB, distinct


@pytest.fixture(scope="module")
def record_files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("zips")
    part1 = make_png_zip(d / "p1.zip", {n: png(n) for n in IAUNAMES[:2]})
    part2 = make_png_zip(d / "p2.zip", {n: png(n) for n in IAUNAMES[2:]}, {"../evil.png": b"evil"})
    return {"schema.md": b"# schema\n", "gz_decals_volunteers_5.csv": b"iauname,png_loc\n" + b"x" * 5000,
            "gz_decals_auto_posteriors.parquet": os.urandom(2 * net.CHUNK_BYTES + 777),  # over a resume chunk
            "gz_decals_dr5_png_part1.zip": part1.read_bytes(), "gz_decals_dr5_png_part2.zip": part2.read_bytes()}


@pytest.fixture()
def svc(record_files):
    with ZenodoImitation(RECORD, record_files) as server:
        yield server


def listed(svc: ZenodoImitation) -> list[RecordFile]:
    with net.make_session(FAST) as session:
        return zenodo.list_files(session, base_url=svc.url, record_id=RECORD, settings=FAST)


def fetch(svc: ZenodoImitation, f: RecordFile, directory: Path, settings: HttpSettings = FAST) -> str:
    with net.make_session(settings) as session:
        return zenodo.download_file(session, f, directory, settings=settings, progress=False)


def content_requests(svc: ZenodoImitation) -> int:
    return len(svc.requests_to(r"/files/[^/]+/content$"))


# -- listing -----------------------------------------------------------------------------------------
def test_list_files_from_record(svc, record_files):
    files = listed(svc)
    assert [f.key for f in files] == list(record_files)
    for f in files:
        assert f.size == len(record_files[f.key]) and f.md5 == hashlib.md5(record_files[f.key]).hexdigest()
        assert f.url == f"{svc.url}/api/records/{RECORD}/files/{f.key}/content"
    assert len(svc.log) == 1


def test_list_files_falls_back_on_entries(record_files):
    with ZenodoImitation(RECORD, record_files, files_in_record=False) as svc:
        files = listed(svc)
        assert [s.request.path for s in svc.log] == [f"/api/records/{RECORD}", f"/api/records/{RECORD}/files"]
    assert [f.key for f in files] == list(record_files)
    assert all(f.url.endswith(f"/files/{f.key}/content") for f in files)  # links.content, not links.self


def test_unknown_record_is_a_clear_error(svc):
    with net.make_session(FAST) as session, pytest.raises(FetchError, match=r"/api/records/999: HTTP 404"):
        zenodo.list_files(session, base_url=svc.url, record_id=999, settings=FAST)


@pytest.mark.parametrize(("body", "message"), [
    (b"<html><body>Maintenance</body></html>", "not JSON"),
    (json.dumps({"files": [{"key": "a.csv", "size": 3, "checksum": "sha256:" + "0" * 64,
                            "links": {"self": "http://x/a"}}]}).encode(), "only md5"),
    (json.dumps({"files": [{"key": "a.csv", "size": "3", "checksum": "md5:" + "0" * 32,
                            "links": {"self": "http://x/a"}}]}).encode(), "'size'"),
    (json.dumps({"files": [{"key": "a.csv", "size": 3, "checksum": "md5:" + "0" * 32}]}).encode(), "no download link"),
    (json.dumps({"files": {"a.csv": 1}}).encode(), "not a list"),
])
def test_malformed_record_is_a_clear_error(svc, body, message):
    svc.inject("body", match=f"/api/records/{RECORD}", body=body)
    with pytest.raises(FetchError, match=message) as err:
        listed(svc)
    assert f"/api/records/{RECORD}" in str(err.value) and "\n" not in str(err.value)


def test_select_keys_and_patterns(svc):
    files = listed(svc)
    chosen = zenodo.select(files, ["gz_decals_dr5_png_part*.zip", "gz_decals_volunteers_5.csv"])
    assert [f.key for f in chosen] == ["gz_decals_volunteers_5.csv", "gz_decals_dr5_png_part1.zip",
                                       "gz_decals_dr5_png_part2.zip"]
    with pytest.raises(FetchError, match=r"'gz_decals_volunteers_9.csv'.*schema.md, gz_decals_volunteers_5.csv"):
        zenodo.select(files, ["schema.md", "gz_decals_volunteers_9.csv"])


# -- downloading -------------------------------------------------------------------------------------
def test_download_verified_and_rerun_fetches_nothing(svc, record_files, tmp_path):
    files = listed(svc)
    assert [fetch(svc, f, tmp_path) for f in files] == ["fetched"] * len(files)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")} == record_files
    before = content_requests(svc)
    assert [fetch(svc, f, tmp_path) for f in listed(svc)] == ["skipped"] * len(files)
    assert content_requests(svc) == before == len(files)


def test_corrupt_once_still_lands_correct(svc, record_files, tmp_path):
    key = "gz_decals_dr5_png_part1.zip"
    (f,) = zenodo.select(listed(svc), [key])
    svc.inject("corrupt", match=f"/files/{key}/content")
    assert fetch(svc, f, tmp_path) == "fetched"
    assert (tmp_path / key).read_bytes() == record_files[key]
    assert [s.fault for s in svc.requests_to("/content$")] == ["corrupt", None]


def test_faults_then_interrupted_run_resumes(svc, record_files, tmp_path):
    key = "gz_decals_dr5_png_part2.zip"
    (f,) = zenodo.select(listed(svc), [key])
    svc.inject("status", match="/content", times=2, code=503)
    svc.inject("truncate", match="/content")
    assert fetch(svc, f, tmp_path) == "resumed"
    assert (tmp_path / key).read_bytes() == record_files[key] and not list(tmp_path.glob("*.part"))


def test_failed_run_then_rerun_resumes(svc, record_files, tmp_path):
    key = "gz_decals_auto_posteriors.parquet"
    (f,) = zenodo.select(listed(svc), [key])
    svc.inject("truncate", match=key)
    svc.inject("status", match=key, times=2, code=503)  # the resume attempt then gives up (retries=1)
    with pytest.raises(FetchError, match=rf"{key}/content: HTTP 503"):
        fetch(svc, f, tmp_path, HttpSettings(timeout_s=5.0, retries=1, backoff_s=0.01))
    part = net.part_path(tmp_path / key)
    assert not (tmp_path / key).exists() and 0 < part.stat().st_size < f.size
    kept = part.stat().st_size
    assert fetch(svc, f, tmp_path) == "resumed"
    assert (tmp_path / key).read_bytes() == record_files[key] and not part.exists()
    assert svc.requests_to("/content$")[-1].request.headers["Range"] == f"bytes={kept}-"


def test_download_link_form(svc, record_files, tmp_path):
    key = "gz_decals_volunteers_5.csv"
    (f,) = zenodo.select(listed(svc), [key])
    f = RecordFile(f.key, f.size, f.md5, f"{svc.url}/records/{RECORD}/files/{key}?download=1")
    assert fetch(svc, f, tmp_path) == "fetched" and (tmp_path / key).read_bytes() == record_files[key]


def test_wrong_checksum_in_record_lands_nothing(record_files, tmp_path):
    key = "gz_decals_volunteers_5.csv"
    with ZenodoImitation(RECORD, record_files, wrong_md5=[key]) as svc:
        (f,) = zenodo.select(listed(svc), [key])
        with pytest.raises(FetchError, match="md5") as err:
            fetch(svc, f, tmp_path)
    assert key in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["../escape.csv", "sub/x.csv", "..", "a\\b.csv", ""])
def test_hostile_key_is_refused(svc, tmp_path, key):
    f = RecordFile(key, 3, "0" * 32, svc.url + "/api/records/1/files/x/content")
    inner = tmp_path / "inner"
    inner.mkdir()
    with pytest.raises(FetchError, match="not a plain file name"):
        fetch(svc, f, inner)
    assert [p for p in tmp_path.rglob("*") if p != inner] == [] and len(svc.log) == 0


# -- archives ----------------------------------------------------------------------------------------
HOSTILE = ["../evil.png", "/abs.png", "J094/../../evil2.png", "C:/win.png", "J094\\..\\..\\evil3.png"]


@pytest.mark.parametrize("name", HOSTILE + ["", "a/../../b"])
def test_unsafe_names(name):
    assert not archives.is_safe_member(name)


@pytest.mark.parametrize("name", ["J094/J094632.40+005103.6.png", "a.png", "./a/b.png", "a..b/c.png"])
def test_safe_names(name):
    assert archives.is_safe_member(name)


def test_index_and_extract_catalog_members(tmp_path):
    z1 = make_png_zip(tmp_path / "p1.zip", {n: png(n) for n in IAUNAMES[:3]})
    z2 = make_png_zip(tmp_path / "p2.zip", {n: png(n) for n in IAUNAMES[2:]}, {"J000/": b""})
    idx = archives.index([z1, z2])
    assert set(idx.members) == {zip_member(n) for n in IAUNAMES}
    assert idx.members[zip_member(IAUNAMES[3])] == (z2, zip_member(IAUNAMES[3]))
    assert idx.duplicates == [(z2, zip_member(IAUNAMES[2]))] and idx.unsafe == []
    out = tmp_path / "images"
    with archives.ZipReader() as reader:
        for name in IAUNAMES[1:3]:  # only what the catalog needs
            zip_path, member = idx.members[zip_member(name)]
            archives.extract(zip_path, member, out / f"{name}.png", max_bytes=1 << 20, reader=reader)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in IAUNAMES[1:3])
    assert all((out / f"{n}.png").read_bytes() == png(n) for n in IAUNAMES[1:3])


def test_hostile_members_never_leave_the_target_dir(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    zip_path = make_png_zip(box / "evil.zip", {IAUNAMES[0]: png(IAUNAMES[0])}, dict.fromkeys(HOSTILE, b"pwned"))
    idx = archives.index([zip_path])
    assert sorted(n for _, n in idx.unsafe) == sorted(HOSTILE) and list(idx.members) == [
        zip_member(IAUNAMES[0])]
    out = box / "out" / "deep"
    for name in HOSTILE:
        with pytest.raises(ArchiveError, match="refused"):
            archives.extract(zip_path, name, out / "x.png", max_bytes=1 << 20)
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert on_disk == {"box", "box/evil.zip"}
    assert not any(p.exists() for p in (Path("/abs.png"), Path("/evil.png"), Path("evil.png")))


def test_zip_bomb_refused_by_ratio_and_by_size(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open("J000/zeros.png", "w") as dst:
        block = bytes(1 << 20)
        for _ in range(50):
            dst.write(block)
    info = zipfile.ZipFile(bomb).getinfo("J000/zeros.png")
    assert info.file_size == 50 << 20 and info.compress_size < 100_000
    target = tmp_path / "out.png"
    with pytest.raises(ArchiveError, match="zip bomb"):
        archives.extract(bomb, "J000/zeros.png", target, max_bytes=1 << 30)
    with pytest.raises(ArchiveError, match="over the 1048576-byte limit"):
        archives.extract(bomb, "J000/zeros.png", target, max_bytes=1 << 20, max_ratio=1e9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]


def _patch(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) >= 1
    path.write_bytes(data.replace(old, new))


def test_lying_declared_size_is_caught_while_streaming(tmp_path):
    zip_path = make_png_zip(tmp_path / "liar.zip", {IAUNAMES[0]: png(IAUNAMES[0])})
    info = zipfile.ZipFile(zip_path).getinfo(zip_member(IAUNAMES[0]))
    true_size = info.file_size.to_bytes(4, "little")
    _patch(zip_path, true_size + true_size, (1000).to_bytes(4, "little") * 2)  # declares 1000 bytes
    with pytest.raises(ArchiveError):
        archives.extract(zip_path, info.filename, tmp_path / "out.png", max_bytes=1 << 20)
    assert not (tmp_path / "out.png").exists() and not list(tmp_path.glob(".out.png*"))


def test_crc_corruption_lands_nothing(tmp_path):
    name = IAUNAMES[0]
    zip_path = make_png_zip(tmp_path / "crc.zip", {name: png(name)})
    data = bytearray(zip_path.read_bytes())
    at = data.index(png(name)) + 1000
    data[at] ^= 0xFF  # stored member: the bytes change, the CRC no longer matches
    zip_path.write_bytes(bytes(data))
    target = tmp_path / "out" / "x.png"
    with pytest.raises(ArchiveError, match="corrupt.*CRC"):
        archives.extract(zip_path, zip_member(name), target, max_bytes=1 << 20)
    assert list(target.parent.iterdir()) == []


def test_not_a_zip_names_the_file(tmp_path):
    bad = tmp_path / "gz_decals_dr5_png_part1.zip"
    bad.write_bytes(b"<html>not a zip</html>" * 100)
    with pytest.raises(ArchiveError, match=r"gz_decals_dr5_png_part1.zip: not a readable zip"):
        archives.index([bad])
    with pytest.raises(ArchiveError, match=r"gz_decals_dr5_png_part1.zip"):
        archives.extract(bad, "J000/x.png", tmp_path / "x.png", max_bytes=100)
    with pytest.raises(ArchiveError, match="no such file"):
        archives.index([tmp_path / "missing.zip"])
    zip_path = make_png_zip(tmp_path / "ok.zip", {IAUNAMES[0]: b"x"})
    with pytest.raises(ArchiveError, match="no such member"):
        archives.extract(zip_path, "J000/absent.png", tmp_path / "x.png", max_bytes=100)


def test_zip64_forced(tmp_path):
    zip_path = tmp_path / "z64.zip"
    payload = os.urandom(200_000)
    with zipfile.ZipFile(zip_path, "w") as zf, zf.open("J094/big.png", "w", force_zip64=True) as dst:
        dst.write(payload)
    idx = archives.index([zip_path])
    archives.extract(*idx.members["J094/big.png"], tmp_path / "big.png", max_bytes=1 << 20)
    assert (tmp_path / "big.png").read_bytes() == payload


def test_zip64_many_members(tmp_path):
    zip_path = tmp_path / "many.zip"
    n = 65_536 + 10  # over the 16-bit member count of plain zip
    with zipfile.ZipFile(zip_path, "w") as zf:
        for i in range(n):
            zf.writestr(f"J{i % 1000:03d}/{i}.png", str(i).encode())
    idx = archives.index([zip_path])
    assert len(idx.members) == n
    archives.extract(*idx.members[f"J{(n - 1) % 1000:03d}/{n - 1}.png"], tmp_path / "last.png", max_bytes=100)
    assert (tmp_path / "last.png").read_bytes() == str(n - 1).encode()


def test_end_to_end_record_to_images(svc, tmp_path):
    """List, select, download the parts, then extract only the catalog's PNGs (hostile member ignored)."""
    parts = zenodo.select(listed(svc), ["gz_decals_dr5_png_part*.zip"])
    for f in parts:
        fetch(svc, f, tmp_path / "zenodo")
    idx = archives.index([tmp_path / "zenodo" / f.key for f in parts])
    assert [n for _, n in idx.unsafe] == ["../evil.png"]
    wanted = IAUNAMES[1:]
    with archives.ZipReader() as reader:
        for name in wanted:
            archives.extract(*idx.members[zip_member(name)], tmp_path / "png" / f"{name}.png",
                             max_bytes=10 << 20, reader=reader)
    assert {p.name: p.read_bytes() for p in (tmp_path / "png").iterdir()} == {f"{n}.png": png(n) for n in wanted}
    assert not (tmp_path / "evil.png").exists()
