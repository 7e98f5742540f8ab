"""The console's shipped files hang together: every referenced asset exists, the vendored bundle matches its pin."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dso.api.routes_console import ASSETS_PATH, STATIC_DIR

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_PKG = ROOT / "console" / "package.json"


def asset_file(url: str) -> Path:
    assert url.startswith(ASSETS_PATH + "/"), f"{url} is not under {ASSETS_PATH}/"
    return STATIC_DIR / url.removeprefix(ASSETS_PATH + "/")


def test_page_references_only_shipped_assets():
    page = (STATIC_DIR / "index.html").read_text()
    urls = re.findall(r'(?:src|href)="(/console/[^"]+)"', page)
    assert any(u.endswith("app.js") for u in urls) and any(u.endswith(".css") for u in urls)
    for url in urls:
        assert asset_file(url).is_file(), url
    # every element the scripts look up by id is in the page
    ids = set(re.findall(r'id="([^"]+)"', page))
    for script in (STATIC_DIR / "js").glob("*.js"):
        for wanted in re.findall(r"\$\('([\w-]+)'\)|getElementById\('([\w-]+)'\)", script.read_text()):
            name = wanted[0] or wanted[1]
            assert name in ids, f"{script.name} looks up #{name}, which index.html lacks"


def test_modules_import_files_that_exist():
    for script in (STATIC_DIR / "js").glob("*.js"):
        text = script.read_text()
        for target in re.findall(r"""(?:from|import\()\s*'([^']+)'""", text):
            path = asset_file(target) if target.startswith("/") else (script.parent / target).resolve()
            assert path.is_file(), f"{script.name} imports {target}, which is not shipped"


def test_vendored_three_matches_the_pinned_package_and_ships_its_licence():
    package = json.loads(CONSOLE_PKG.read_text())
    pins = {**package["dependencies"], **package["devDependencies"]}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in pins.values()), f"versions must be exact: {pins}"
    assert (ROOT / "console" / "package-lock.json").is_file()
    bundle = (STATIC_DIR / "vendor" / "three-viewer.min.js").read_text()
    assert bundle.startswith(f"/* three.js r{pins['three'].split('.')[1]} (npm three@{pins['three']})")
    licence = (STATIC_DIR / "vendor" / "three-LICENSE.txt").read_text()
    assert "MIT License" in licence and "three.js authors" in licence
