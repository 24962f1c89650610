#!/usr/bin/env python3
"""The family web app in a real browser (Debian's chromium, headless, phone-sized, through chromium-driver): run by tests/e2e/web_browser.rs against a real hub."""
import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

HEARTH = os.environ["HEARTH"]
DEVICE = os.environ["HEARTH_DEVICE"]
SOCKET = os.environ["HEARTH_SOCKET"]
WORK = os.environ["WORK"]
SHOTS = os.environ["SHOTS"]
SERVER_PEM = os.environ["SERVER_PEM"]
URL = sys.argv[1]
ORIGIN = URL.split("/#")[0]
drivers = []


def step(text):
    print("--", text, flush=True)


def hearth(*args):
    out = subprocess.run([HEARTH, "--socket", SOCKET, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hearth {args}: {out.stdout}{out.stderr}"
    return out.stdout


def device(*args, timeout=60):
    out = subprocess.run([DEVICE, "--dir", os.path.join(WORK, "toy"), *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"hearth-device {args}: {out.stdout}{out.stderr}"
    return out.stdout


def spki_hash():
    """What chromium is told to trust: exactly the hub's server key (a phone trusts the hub CA instead, docs/WEB.md)."""
    with open(SERVER_PEM, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
        f"--ignore-certificate-errors-spki-list={spki_hash()}",
        # Nothing of chromium's own may leave the machine either.
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-default-apps", "--disable-sync",
        "--disable-domain-reliability", "--disable-client-side-phishing-detection",
        "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    ]:
        options.add_argument(arg)
    # A phone's screen: 360 CSS pixels wide.
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": 360, "height": 740, "pixelRatio": 2}})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    drivers.append(driver)
    return driver


def wait(driver, what, limit=10):
    try:
        # Lists re-render live: an element read while it is replaced is read again.
        return WebDriverWait(driver, limit, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: what(d))
    except TimeoutException:
        shot(driver, "failure")
        raise AssertionError(f"timed out waiting; page text:\n{driver.find_element(By.TAG_NAME, 'body').text}")


def shot(driver, name):
    os.makedirs(SHOTS, exist_ok=True)
    driver.save_screenshot(os.path.join(SHOTS, name + ".png"))


def visible(driver, element_id):
    return driver.find_element(By.ID, element_id).is_displayed()


def nav(driver, screen):
    driver.find_element(By.CSS_SELECTOR, f'nav button[data-screen="{screen}"]').click()
    wait(driver, lambda d: visible(d, "screen-" + screen))


def join(driver, url):
    driver.get(url)
    wait(driver, lambda d: visible(d, "screen-join"))
    # Before joining, nothing of a signed-in page shows.
    assert not visible(driver, "nav") and not visible(driver, "sign-out"), "the menu shows before joining"
    driver.find_element(By.ID, "join-button").click()
    wait(driver, lambda d: not visible(d, "screen-join") and visible(d, "nav"))


def card_text(driver, label):
    """The text of the device card titled `label` (the list re-renders live, so read it in one go)."""
    return driver.execute_script(
        "for (const li of document.querySelectorAll('#devices > li'))"
        "  if (li.querySelector('.title').textContent === arguments[0]) return li.innerText;"
        "return null;", label)


def card_button(driver, label, text):
    """Clicks the button starting with `text` on the card titled `label`; false if not there now."""
    return driver.execute_script(
        "for (const li of document.querySelectorAll('#devices > li'))"
        "  if (li.querySelector('.title').textContent === arguments[0])"
        "    for (const b of li.querySelectorAll('button'))"
        "      if (b.textContent.startsWith(arguments[1])) { b.click(); return true; }"
        "return false;", label, text)


def png(path):
    """A small real PNG (a gradient), made here."""
    width = height = 64
    raw = b"".join(b"\x00" + b"".join(bytes((x * 4, y * 4, 128)) for x in range(width)) for y in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + body)


def thread_texts(driver):
    """The open conversation's messages, read in one go (it re-renders live)."""
    return driver.execute_script("return Array.from(document.querySelectorAll('#thread > li'), li => li.innerText.trim());")


def received(driver, body):
    """Whether this browser holds a message with this text."""
    return driver.execute_script(
        "return Object.keys(localStorage).filter(k => k.startsWith('hearth.messages.'))"
        "  .some(k => (JSON.parse(localStorage.getItem(k)) || []).some(m => m.dir === 'in' && m.body === arguments[0]));", body)


def kept_messages(driver):
    """How many messages this browser keeps."""
    return driver.execute_script(
        "return Object.keys(localStorage).filter(k => k.startsWith('hearth.messages.'))"
        "  .reduce((n, k) => n + (JSON.parse(localStorage.getItem(k)) || []).length, 0);")


def check_only_hub_requests(driver, who):
    """Every request the page made went to the hub (or was a data:/blob: URL it made itself)."""
    seen = 0
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            seen += 1
            assert url.startswith(ORIGIN + "/") or url.startswith("data:") or url.startswith("blob:"), f"{who}'s page requested {url}"
    assert seen > 0, "no network log recorded"
    for entry in driver.get_log("browser"):
        assert "Content Security Policy" not in entry["message"], f"{who}: {entry['message']}"


def main():
    step("the first parent joins with the link from `hearth web-link`")
    mum = browser()
    join(mum, URL)
    width = mum.execute_script("return window.innerWidth")
    assert width == 360, width
    assert mum.execute_script("return document.documentElement.scrollWidth") <= 360, "the page scrolls sideways on a phone"
    assert visible(mum, "screen-home")
    assert mum.execute_script("return location.hash") == "", "the code stays in the address bar"

    step("she adds a child and opens a pairing window in the page")
    nav(mum, "family")
    mum.find_element(By.ID, "member-name").send_keys("ada")
    Select(mum.find_element(By.ID, "member-role")).select_by_value("child")
    mum.find_element(By.CSS_SELECTOR, "#member-form button[type=submit]").click()
    wait(mum, lambda d: any(li.text.startswith("ada") for li in d.find_elements(By.CSS_SELECTOR, "#members > li")))
    shot(mum, "family")
    nav(mum, "add")
    wait(mum, lambda d: "ada" in [o.text for o in Select(d.find_element(By.ID, "pair-member")).options])
    Select(mum.find_element(By.ID, "pair-member")).select_by_visible_text("ada")
    mum.find_element(By.ID, "pair-label").send_keys("robot")
    mum.find_element(By.CSS_SELECTOR, "#pair-form button[type=submit]").click()
    wait(mum, lambda d: d.find_element(By.ID, "pair-uri").text.startswith("hearth://"))
    uri = mum.find_element(By.ID, "pair-uri").text
    shot(mum, "add-device")

    step("the toy pairs with the URI read from the page and appears")
    device("pair", uri)
    wait(mum, lambda d: "paired" in d.find_element(By.ID, "pair-wait").text)
    toy = subprocess.Popen([DEVICE, "--dir", os.path.join(WORK, "toy"), "run"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    toy_said = []
    threading.Thread(target=lambda: [toy_said.append(line) for line in toy.stdout], daemon=True).start()
    try:
        toy_id = open(os.path.join(WORK, "toy", "device.toml")).read().split('device_id = "')[1].split('"')[0]
        deadline = time.time() + 20
        while toy_id not in json.loads(hearth("--json", "status"))["connected"]:
            assert time.time() < deadline, "the toy did not connect"
            time.sleep(0.05)
        connected = time.time()
        nav(mum, "home")
        wait(mum, lambda d: "online" in (card_text(d, "robot") or ""), limit=2)
        print(f"online in the page {time.time() - connected:.2f} s after the hub saw it connect", flush=True)
        # Its telemetry shows too.
        wait(mum, lambda d: "status: " in (card_text(d, "robot") or ""), limit=10)
        shot(mum, "home")

        step("she sends the toy a command from its card (it declares none: the raw form)")
        mum.execute_script(
            "for (const li of document.querySelectorAll('#devices > li'))"
            "  if (li.querySelector('.title').textContent === 'robot') {"
            "    const i = li.querySelector('.commands input'); i.value = 'beep'; i.dispatchEvent(new Event('input'));"
            "    li.querySelector('.commands button').click(); }")
        deadline = time.time() + 10
        while not any("cmd" in line and "beep" in line for line in toy_said):
            assert time.time() < deadline, f"the toy got no command: {toy_said}"
            time.sleep(0.05)
    finally:
        toy.terminate()
        toy.wait(timeout=10)

    step("she sends the toy a text and a photo")
    nav(mum, "messages")
    wait(mum, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#contacts button")) > 0)
    [b for b in mum.find_elements(By.CSS_SELECTOR, "#contacts button") if b.text == "ada"][0].click()
    wait(mum, lambda d: visible(d, "conversation"))
    mum.find_element(By.ID, "send-text").send_keys("dinner is ready")
    mum.find_element(By.CSS_SELECTOR, "#send-form button[type=submit]").click()
    picture = os.path.join(WORK, "picture.png")
    png(picture)
    mum.find_element(By.ID, "send-photo").send_keys(picture)
    wait(mum, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thread img")) == 1)
    step("and a voice note recorded in the page (chromium's fake microphone)")
    mum.find_element(By.ID, "record").click()
    wait(mum, lambda d: d.find_element(By.ID, "record").text.startswith("Stop"))
    time.sleep(1.5)
    mum.find_element(By.ID, "record").click()
    wait(mum, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thread audio")) == 1)
    wait(mum, lambda d: [t.get_attribute("title") for t in d.find_elements(By.CSS_SELECTOR, "#thread .tick")] == ["stored"] * 3)

    step("the toy's inbox receives both and acknowledges them: delivered ticks in the page")
    inbox = device("inbox", "--wait", "4")
    assert "dinner is ready" in inbox, inbox
    saved = os.listdir(os.path.join(WORK, "toy", "inbox"))
    assert any(name.endswith(".jpg") or name.endswith(".jpeg") for name in saved), (inbox, saved)
    assert any(name.endswith(".webm") or name.endswith(".ogg") for name in saved), (inbox, saved)
    wait(mum, lambda d: [t.get_attribute("title") for t in d.find_elements(By.CSS_SELECTOR, "#thread .tick")] == ["delivered"] * 3)

    step("the toy's reply appears live")
    device("send", "--to", "mum", "--text", "coming!")
    wait(mum, lambda d: "coming!" in thread_texts(d))
    shot(mum, "messages")

    step("a child's tablet joins from a code made in the parent's page and sees only its contacts")
    nav(mum, "family")
    Select(mum.find_element(By.ID, "join-member")).select_by_visible_text("ada")
    mum.find_element(By.ID, "join-label").send_keys("tablet")
    mum.find_element(By.CSS_SELECTOR, "#join-form button[type=submit]").click()
    wait(mum, lambda d: "#join=" in d.find_element(By.ID, "join-url").text)
    child_url = mum.find_element(By.ID, "join-url").text
    ada = browser()
    join(ada, child_url)
    wait(ada, lambda d: visible(d, "screen-messages"))
    shown = [b.text for b in ada.find_elements(By.CSS_SELECTOR, "nav button") if b.is_displayed()]
    assert shown == ["Messages"], shown
    wait(ada, lambda d: [b.text for b in d.find_elements(By.CSS_SELECTOR, "#contacts button")] == ["mum"])
    status = ada.execute_async_script("const done = arguments[0]; fetch('/api/household').then(r => done(r.status));")
    assert status == 403, status
    [b for b in ada.find_elements(By.CSS_SELECTOR, "#contacts button") if b.text == "mum"][0].click()
    ada.find_element(By.ID, "send-text").send_keys("love you")
    ada.find_element(By.CSS_SELECTOR, "#send-form button[type=submit]").click()
    wait(mum, lambda d: received(d, "love you"))
    shot(ada, "child")

    step("revoking a browser from another parent's page ends that page at once")
    hearth("member", "add", "dad", "--role", "parent")
    out = json.loads(hearth("--json", "web-link", "--member", "dad", "--label", "dads-phone"))
    dad = browser()
    join(dad, out["url"])
    nav(mum, "home")
    wait(mum, lambda d: card_button(d, "dads-phone", "Revoke"))
    wait(mum, lambda d: card_button(d, "dads-phone", "Yes"))
    started = time.time()
    wait(dad, lambda d: visible(d, "screen-signed-out"), limit=2)
    print(f"the revoked page closed {time.time() - started:.2f} s after the click", flush=True)

    step("a revoked tablet forgets the messages it kept")
    assert kept_messages(ada) > 0
    wait(mum, lambda d: card_button(d, "tablet", "Revoke"))
    wait(mum, lambda d: card_button(d, "tablet", "Yes"))
    wait(ada, lambda d: visible(d, "screen-signed-out"), limit=2)
    assert kept_messages(ada) == 0

    step("the activity screen words the audit")
    nav(mum, "activity")
    wait(mum, lambda d: "dads-phone was revoked" in d.find_element(By.ID, "activity").text)
    assert "ada's robot connected" in mum.find_element(By.ID, "activity").text
    shot(mum, "activity")

    step("privacy screen")
    nav(mum, "privacy")
    wait(mum, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#privacy-table tbody tr")) > 3)
    shot(mum, "privacy")

    step("nothing was requested from anywhere but the hub, and no policy violation was reported")
    for who, driver in [("mum", mum), ("ada", ada), ("dad", dad)]:
        check_only_hub_requests(driver, who)
    print("web_browser: all steps passed", flush=True)


try:
    main()
finally:
    for d in drivers:
        d.quit()
