"""Drives the status page in headless Chromium: python page_check.py URL SCREENSHOT CHROMIUM."""
import json
import sys
import urllib.request

from playwright.sync_api import sync_playwright

url, shot, chromium = sys.argv[1], sys.argv[2], sys.argv[3]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector('tr[data-model="big-a"][data-state="cold"]')
    page.wait_for_selector('#conn:text("live")')
    assert "0 B of 300 MB used" in page.inner_text("#summary"), page.inner_text("#summary")

    # A button on the page loads a model; the row, the bar and the events follow.
    page.click('button[data-load="big-a"]')
    page.wait_for_selector('tr[data-model="big-a"][data-state="ready"]', timeout=20000)
    page.wait_for_selector('.seg[data-model="big-a"]')
    page.wait_for_selector('#events li[data-kind="ready"]')

    # A change made elsewhere (a client request) shows up live, without a reload.
    req = urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "kept", "messages": []}).encode(),
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=20).read()
    page.wait_for_selector('tr[data-model="kept"][data-state="ready"]', timeout=20000)
    # That request is in the recent requests, and in today's figures, within a refresh.
    page.wait_for_selector('#requests tr[data-model="kept"][data-status="200"]', timeout=10000)
    row = page.inner_text('#requests tr[data-model="kept"]')
    assert "caused" in row and "127.0.0.1" in row, "the request that loaded it: " + row
    page.wait_for_selector('#daily tr[data-summary="kept"]', timeout=10000)
    idle = page.inner_text('tr[data-model="big-a"] td.idle')
    assert idle.startswith("9m ") or idle.startswith("10m "), "counts down from idle_timeout: " + idle
    assert page.inner_text('tr[data-model="kept"] td.idle') == "–", "a pinned model never idles out"

    # Loading the other member of the group evicts the first, and says why.
    page.click('button[data-load="big-b"]')
    page.wait_for_selector('tr[data-model="big-a"][data-state="cold"]', timeout=20000)
    page.wait_for_selector('tr[data-model="big-b"][data-state="ready"]', timeout=20000)
    events = page.inner_text("#events")
    assert "to make room for big-b" in events, events
    page.screenshot(path=shot, full_page=True)

    page.click('button[data-unload="big-b"]')
    page.wait_for_selector('tr[data-model="big-b"][data-state="cold"]', timeout=20000)
    assert not errors, errors

    # A page opened now, after the fact, still says why each model left: the
    # router keeps the recent events. And it shows groups and pinned models.
    fresh = browser.new_page(viewport={"width": 1200, "height": 760})
    fresh.on("pageerror", lambda e: errors.append(str(e)))
    fresh.goto(url)
    fresh.wait_for_selector('#events li[data-kind="unloaded"]')
    history = fresh.inner_text("#events")
    assert "unloaded big-a to make room for big-b" in history, history
    assert "unloaded big-b asked to" in history, history
    assert history.index("unloaded big-b asked to") < history.index("unloaded big-a to make room"), "newest first: " + history
    assert fresh.inner_text('tr[data-model="big-a"] td.group').startswith("large")
    assert fresh.inner_text('tr[data-model="kept"] td.group').startswith("–")
    assert "pinned" in fresh.inner_text('tr[data-model="kept"]')
    assert not errors, errors
    browser.close()
print("page ok")
