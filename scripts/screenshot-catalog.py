#!/usr/bin/env python3
"""Screenshot a finished catalog page with headless Chromium (the README's scripts/docs/catalog.png).

    python scripts/screenshot-catalog.py CATALOG_DIR OUT.png [--page index.html] [--width 1280 --height 900]

CATALOG_DIR is a run's ``output/catalog`` folder (after ``ecocube finalize``; the README's
tutorial makes ``flanders/output/catalog``). The folder is served by ``ecocube browse`` on a free
port of 127.0.0.1, the page opened in Chromium (``/usr/bin/chromium`` by default, driven by
Playwright, from the test extras), every thumbnail waited for, and the top of the page saved as
PNG. Exit 1 with one line when the server, the page or an image fails.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("catalog_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--page", default="index.html", help="page under the catalog (index.html or map.html)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args(argv)
    if not (args.catalog_dir / "catalog.json").is_file():
        print(f"screenshot-catalog: {args.catalog_dir}: no catalog.json (run ecocube finalize first)", file=sys.stderr)
        return 1
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, "-m", "ecocube", "browse", str(args.catalog_dir), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = None
        for line in server.stdout:
            m = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)/", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            print(f"screenshot-catalog: ecocube browse did not start (exit {server.wait()})", file=sys.stderr)
            return 1
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{url}/{args.page}", wait_until="load")
                for img in page.locator("img").all():  # lazy thumbnails load when scrolled to
                    img.scroll_into_view_if_needed()
                page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)",
                                       timeout=60_000)
                page.evaluate("window.scrollTo(0, 0)")
                if errors:
                    print(f"screenshot-catalog: {url}/{args.page}: {errors[0]}", file=sys.stderr)
                    return 1
                args.out.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.out.with_name(f".{args.out.stem}.tmp.png")
                page.screenshot(path=str(tmp))
                tmp.replace(args.out)  # atomic: no half-written PNG under the final name
            finally:
                browser.close()
    except PlaywrightError as exc:
        print(f"screenshot-catalog: {url}/{args.page}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)
    print(f"wrote {args.out} ({args.width}x{args.height}) from {url}/{args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
