"""Provision visdom's browser assets from the npm registry so its server never touches a CDN.

visdom 0.2.4's ``download_scripts`` fetches JavaScript, CSS and fonts from unpkg, cdn.plot.ly,
d3js.org and cdnjs at every start; offline its page stays blank. This script takes the same
files, at the same versions, from npm tarballs (``npm pack``), checks every tarball against the
committed lock (npm's sha512 integrity, recomputed here, and a SHA-256) and every extracted file
against its SHA-256, writes them where the server serves them and marks the build as done
(``static/version.built``) so ``download_scripts`` finds nothing to fetch. A second run only
re-hashes the installed files (well under a second).

    python scripts/visdom_assets.py              # provision (idempotent)
    python scripts/visdom_assets.py --check      # exit 1 unless everything is in place
    python scripts/visdom_assets.py --update-lock  # maintainers: re-pin after changing ASSETS
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from experiment.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger("visdom_assets")

LOCK_PATH = Path(__file__).with_name("visdom_assets.lock.json")
MATHJAX = "js/mathjax/2.7.5/"
GLYPHICONS = "package/dist/fonts/glyphicons-halflings-regular"

# npm package -> {file in its tarball: paths under visdom/static/ it is served as}. Versions are
# those pinned by visdom 0.2.4's visdom/server/build.py. Three files come from a CDN rather than
# unpkg; their npm packages hold the same release: cdn.plot.ly/plotly-2.11.1.min.js
# (plotly.js-dist-min@2.11.1), d3js.org/d3.v3.min.js (d3@3.5.17, the last 3.x) and
# d3js.org/d3-selection-multi.v1.js (d3-selection-multi@1.0.1, the last 1.x); cdnjs's MathJax
# 2.7.5 is the npm ``mathjax@2.7.5`` release.
ASSETS: dict[str, dict[str, tuple[str, ...]]] = {
    "jquery@3.1.1": {"package/dist/jquery.min.js": ("js/jquery.min.js",)},
    "bootstrap@3.3.7": {
        "package/dist/js/bootstrap.min.js": ("js/bootstrap.min.js",),
        "package/dist/css/bootstrap.min.css": ("css/bootstrap.min.css",),
        f"{GLYPHICONS}.eot": ("fonts/glyphicons-halflings-regular.eot",),
        f"{GLYPHICONS}.woff2": ("fonts/glyphicons-halflings-regular.woff2",),
        f"{GLYPHICONS}.woff": ("fonts/glyphicons-halflings-regular.woff",),
        f"{GLYPHICONS}.ttf": ("fonts/glyphicons-halflings-regular.ttf",),
        # browsers request the plain name; build.py checks for the name with the URL fragment
        f"{GLYPHICONS}.svg": ("fonts/glyphicons-halflings-regular.svg",
                              "fonts/glyphicons-halflings-regular.svg#glyphicons_halflingsregular"),
    },
    "react@16.2.0": {"package/umd/react.production.min.js": ("js/react-react.min.js",)},
    "react-dom@16.2.0": {"package/umd/react-dom.production.min.js": ("js/react-dom.min.js",)},
    "react-modal@3.1.10": {"package/dist/react-modal.min.js": ("js/react-modal.min.js",)},
    "plotly.js-dist-min@2.11.1": {"package/plotly.min.js": ("js/plotly-plotly.min.js",)},
    "sjcl@1.0.7": {"package/sjcl.js": ("js/sjcl.js",)},
    "layout-bin-packer@1.4.0": {
        "package/dist/layout-bin-packer.js": ("js/layout_bin_packer.js",),
        "package/dist/layout-bin-packer.js.map": ("js/layout-bin-packer.js.map",),
    },
    "d3@3.5.17": {"package/d3.min.js": ("js/d3.v3.min.js",)},
    "d3-selection-multi@1.0.1": {"package/build/d3-selection-multi.js": ("js/d3-selection-multi.v1.js",)},
    "save-svg-as-png@1.4.17": {"package/lib/saveSvgAsPng.js": ("js/saveSvgAsPng.js",)},
    "react-resizable@1.4.6": {"package/css/styles.css": ("css/react-resizable-styles.css",)},
    "react-grid-layout@0.16.3": {"package/css/styles.css": ("css/react-grid-layout-styles.css",)},
    # build.py saves unpkg's answer for the bare package URL (its main file) under fonts/
    "classnames@2.2.5": {"package/index.js": ("fonts/classnames",)},
    "mathjax@2.7.5": {f"package/{name}": (MATHJAX + name,) for name in (
        "MathJax.js", "config/Safe.js", "config/TeX-AMS-MML_HTMLorMML.js", "extensions/Safe.js",
        "jax/output/SVG/config.js", "jax/output/SVG/jax.js", "jax/output/SVG/fonts/TeX/fontdata.js",
        "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js")},
}


class AssetError(RuntimeError):
    """A tarball or file does not match the lock, or npm could not deliver it."""


def visdom_dir() -> Path:
    """The installed visdom package, found without importing it (``import visdom`` loads torch)."""
    spec = importlib.util.find_spec("visdom")
    if spec is None or spec.origin is None:
        raise AssetError("visdom is not installed in this environment (scripts/setup.sh installs it)")
    return Path(spec.origin).parent


def static_dir() -> Path:
    """The folder the visdom server serves ``/static`` from (``get_visdom_path()/static``)."""
    return visdom_dir() / "static"


def visdom_version() -> str:
    """The installed visdom version (its ``VERSION`` file), which ``version.built`` must hold."""
    return (visdom_dir() / "VERSION").read_text(encoding="utf-8").strip()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npm_integrity(data: bytes) -> str:
    """npm's Subresource-Integrity string (sha512, base64) of a tarball."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def load_lock(path: Path = LOCK_PATH) -> dict:
    """The committed lock: per package its tarball integrity, SHA-256 and file SHA-256s."""
    if not path.exists():
        raise AssetError(f"{path}: lock file missing; run with --update-lock once and commit it")
    lock = json.loads(path.read_text(encoding="utf-8"))
    if set(lock["packages"]) != set(ASSETS):
        raise AssetError(f"{path}: packages differ from ASSETS in {__file__}; run with --update-lock")
    return lock


def stale_packages(target: Path, lock: dict) -> list[str]:
    """Packages with an installed file that is missing or differs from the lock."""
    stale = []
    for spec, members in ASSETS.items():
        files = lock["packages"][spec]["files"]
        for member, destinations in members.items():
            if any(not (target / d).is_file() or sha256((target / d).read_bytes()) != files[member]
                   for d in destinations):
                stale.append(spec)
                break
    return stale


def is_built(target: Path) -> bool:
    """Whether ``version.built`` says this visdom version's assets are installed."""
    built = target / "version.built"
    return built.is_file() and built.read_text(encoding="utf-8").strip() == visdom_version()


def npm_pack(specs: list[str], folder: Path) -> dict[str, Path]:
    """Download the tarballs of ``specs`` from the npm registry into ``folder``."""
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError("npm not found: it is needed once to fetch visdom's assets (apt-get install npm)")
    result = subprocess.run([npm, "pack", "--json", "--loglevel=error", *specs], cwd=folder,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssetError(f"npm pack {' '.join(specs)} failed:\n{result.stderr.strip()}")
    packed = {entry["id"]: folder / entry["filename"] for entry in json.loads(result.stdout)}
    missing = set(specs) - set(packed)
    if missing:
        raise AssetError(f"npm pack did not deliver {sorted(missing)}")
    return packed


def read_members(tarball: Path, members: list[str]) -> dict[str, bytes]:
    """The bytes of ``members`` of an npm tarball (regular files only; nothing is extracted)."""
    found = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for info in archive.getmembers():
            if info.name in members and info.isfile():
                found[info.name] = archive.extractfile(info).read()
    missing = set(members) - set(found)
    if missing:
        raise AssetError(f"{tarball.name}: missing {sorted(missing)}")
    return found


def verify_tarball(spec: str, data: bytes, pinned: dict) -> None:
    """Raise unless the tarball matches the lock's integrity and SHA-256."""
    if npm_integrity(data) != pinned["integrity"] or sha256(data) != pinned["sha256"]:
        raise AssetError(f"{spec}: tarball checksum differs from {LOCK_PATH.name} "
                         f"(got sha256 {sha256(data)}); refusing to install it")


def install(target: Path, lock: dict, specs: list[str]) -> None:
    """Fetch ``specs`` with npm, verify them against ``lock`` and write their files under ``target``."""
    with tempfile.TemporaryDirectory(prefix="visdom-assets-") as tmp:
        for spec, tarball in npm_pack(specs, Path(tmp)).items():
            pinned = lock["packages"][spec]
            verify_tarball(spec, tarball.read_bytes(), pinned)
            for member, data in read_members(tarball, list(ASSETS[spec])).items():
                if sha256(data) != pinned["files"][member]:
                    raise AssetError(f"{spec}: {member} differs from {LOCK_PATH.name}")
                for destination in ASSETS[spec][member]:
                    atomic_write_bytes(target / destination, data)
            log.info("installed %s (%d files)", spec, len(ASSETS[spec]))


def provision(target: Path, lock: dict) -> list[str]:
    """Install what is missing or altered and mark the build done; returns the packages fetched."""
    stale = stale_packages(target, lock)
    if stale:
        install(target, lock, stale)
    if not is_built(target):
        atomic_write_text(target / "version.built", visdom_version())
    return stale


def update_lock(path: Path = LOCK_PATH) -> None:
    """Pin the tarballs npm delivers now (trust on first use) and the SHA-256 of every used file."""
    packages = {}
    with tempfile.TemporaryDirectory(prefix="visdom-assets-") as tmp:
        for spec, tarball in npm_pack(list(ASSETS), Path(tmp)).items():
            data = tarball.read_bytes()
            members = read_members(tarball, list(ASSETS[spec]))
            packages[spec] = {"tarball": tarball.name, "integrity": npm_integrity(data), "sha256": sha256(data),
                              "files": {name: sha256(content) for name, content in sorted(members.items())}}
    atomic_write_json(path, {"visdom": visdom_version(), "registry": "https://registry.npmjs.org/",
                             "packages": packages})
    log.info("wrote %s (%d packages)", path, len(packages))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only verify; exit 1 when anything is missing")
    mode.add_argument("--update-lock", action="store_true", help="re-pin the lock from the npm registry")
    parser.add_argument("--target", type=Path, default=None, help="static folder (default: visdom's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="visdom-assets: %(message)s")
    if args.update_lock:
        update_lock()
        return 0
    try:
        target = args.target or static_dir()
        lock = load_lock()
        if args.check:
            stale = stale_packages(target, lock)
            if stale or not is_built(target):
                log.error("%s: not provisioned (stale: %s, built: %s)", target, stale, is_built(target))
                return 1
            log.info("%s: all %d packages in place", target, len(ASSETS))
            return 0
        fetched = provision(target, lock)
    except AssetError as error:
        log.error("%s", error)
        return 1
    log.info("%s: %s", target, f"fetched {len(fetched)} packages" if fetched else "already provisioned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
