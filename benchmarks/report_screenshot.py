"""Open a study report in headless Chromium (no server: file://) and save a screenshot.

    python benchmarks/report_screenshot.py demo_out/report/report.html report.png

Needs Debian's ``chromium`` (apt-get install chromium). Prints the screenshot's size and whether
the page's images decoded (a blank or broken page gives a nearly uniform picture).
"""

import shutil
import subprocess
import sys
from pathlib import Path

html, png = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if exe is None:
    print("skip: no chromium (apt-get install chromium)")
    sys.exit(0)
subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
                "--window-size=1200,2400", html.as_uri()], check=True, capture_output=True, timeout=120)
from PIL import Image  # noqa: E402 (matplotlib depends on pillow)

img = Image.open(png).convert("L")
hist = img.histogram()
non_white = 1 - hist[255] / sum(hist)
print(f"screenshot {png} {img.size[0]}x{img.size[1]}, {non_white:.1%} non-white pixels")
