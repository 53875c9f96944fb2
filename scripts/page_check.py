"""The server's web page in a real headless browser: starts `flux-img2img serve` on a tiny fixture model, opens `/`
in Chromium (Selenium), uploads an image, fills the form, presses Run, waits for the result, saves a screenshot
and checks the page's image is byte for byte the CLI's for the same request. Not part of CI (it needs Chromium,
chromedriver and selenium: apt-get install chromium chromium-driver; pip install selenium).
usage: python scripts/page_check.py [SCREENSHOT.png] [BINARY] [MODEL]
       (defaults: page.png, target/debug/flux-img2img, tests/fixtures/tiny-schnell)"""
import base64, os, shutil, subprocess, sys, tempfile, time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
shot = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "page.png")
binary = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "target/debug/flux-img2img"))
model = os.path.abspath(sys.argv[3] if len(sys.argv) > 3 else os.path.join(root, "tests/fixtures/tiny-schnell"))
work = tempfile.mkdtemp(prefix="page-check-")
image = os.path.join(work, "input.png")
shutil.copy(os.path.join(root, "tests/fixtures/images/photo-96x64.png"), image)

server = subprocess.Popen([binary, "serve", "--port", "0", "--model", model], stderr=subprocess.PIPE, text=True)
ok = False
try:
    for line in server.stderr:
        if line.startswith("listening on "):
            base = line.split()[-1]
            break
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        driver.get(base + "/")
        driver.find_element(By.ID, "file").send_keys(image)
        for field, value in (("prompt", "a red house"), ("strength", "0.7"), ("steps", "4"), ("seed", "7")):
            el = driver.find_element(By.ID, field)
            el.clear()
            el.send_keys(value)
        driver.find_element(By.ID, "previews").click()
        t0 = time.time()
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.ID, "stage").text in ("done", "failed", "cancelled"))
        WebDriverWait(driver, 30).until(
            lambda d: (d.find_element(By.ID, "out").get_attribute("src") or "").startswith("data:") or
            d.find_element(By.ID, "err").text)
        stage, err = driver.find_element(By.ID, "stage").text, driver.find_element(By.ID, "err").text
        src = driver.find_element(By.ID, "out").get_attribute("src") or ""
        driver.save_screenshot(shot)
        print(f"page: stage {stage!r} after {time.time() - t0:.1f} s{', error ' + err if err else ''}; "
              f"screenshot {shot}")
    finally:
        driver.quit()
    page_png = base64.b64decode(src.split(",", 1)[1]) if "," in src else b""
    subprocess.run([binary, "--model", model, "--image", "input.png", "--prompt", "a red house", "--strength", "0.7",
                    "--steps", "4", "--seed", "7", "-q", "-o", "cli.png"], cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    same = page_png == open(os.path.join(work, "cli.png"), "rb").read()
    print(f"page's image {'identical to' if same else 'DIFFERS from'} the CLI's for the same request")
    ok = stage == "done" and same
finally:
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(work)
sys.exit(0 if ok else 1)
