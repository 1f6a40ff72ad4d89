"""Render the dashboard of a database and screenshot it in headless Chromium (for docs/operations.md).

python docs/screenshot.py --db .embedpipe/db --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from embedpipe import dashboard
from embedpipe.config import get_settings
from embedpipe.store import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=".embedpipe/db")
    ap.add_argument("--out", default="docs/dashboard.png")
    args = ap.parse_args()
    store = Store(get_settings({"store": {"uri": args.db}}).store)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "dashboard.html"
        page.write_text(dashboard.build(store), encoding="utf-8")
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp}/profile",
            "--window-size=1400,1250",
        ):
            opts.add_argument(flag)
        drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            drv.get(page.as_uri())
            WebDriverWait(drv, 60).until(
                lambda d: d.execute_script("return document.querySelectorAll('.chart .trace').length") > 0
            )
            drv.save_screenshot(args.out)
        finally:
            drv.quit()


if __name__ == "__main__":
    main()
