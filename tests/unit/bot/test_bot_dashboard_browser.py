"""The dashboard page in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium), through deploy/tunnel.py and a real dashboard-proxy to a running paper bot: every
limit shows with its threshold, and a halt from the bot's CLI appears without a reload."""
import json

import pytest

from dash_helpers import start_bot, tunnel_to
from tests import browser as browser_tool

pytestmark = pytest.mark.skipif(not browser_tool.available(), reason=browser_tool.MISSING)
REQUIRED = {"daily_loss_pct": "Daily loss", "drawdown_pct": "Drawdown", "consecutive_losses": "Loss streak",
            "total_exposure": "Exposure", "orders_per_minute_throttle": "Order rate"}

# The limits table as the page shows it, read in one go.
ROWS_JS = """return [...document.querySelectorAll('#limits tr[data-limit]')].map((tr) => ({name: tr.dataset.limit,
  label: tr.querySelector('td.name').textContent, limit: tr.querySelector('td.limit').textContent,
  pct: tr.querySelector('td.pct').textContent}));"""


@pytest.fixture
def browser(tmp_path):
    with browser_tool.chromium(tmp_path) as driver:
        yield driver


def test_page_shows_every_limit_with_its_threshold_and_updates_to_halted_without_reload(bot, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rt = start_bot(bot)
    with tunnel_to(rt) as t:
        browser.get(t.url)
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: d.find_element(By.ID, "state").text == "ACTIVE")
        wait.until(lambda d: d.execute_script(ROWS_JS))
        truth = json.loads(bot.cli("status", "--json", "--runtime-dir", str(rt), state=False).stdout)
        rows = {r["name"]: r for r in browser.execute_script(ROWS_JS)}   # one snapshot: the page redraws every poll
        assert set(rows) == {u["name"] for u in truth["limits"]}
        for u in truth["limits"]:
            assert float(rows[u["name"]]["limit"]) == pytest.approx(u["limit"], rel=1e-4), (u, rows[u["name"]])
            assert rows[u["name"]]["pct"].endswith("%")
        for name, label in REQUIRED.items():
            assert rows[name]["label"].startswith(label)
        wait.until(lambda d: "points over" in d.find_element(By.ID, "equity-range").text)
        assert browser.find_element(By.CSS_SELECTOR, "#equity polyline").get_attribute("points")

        browser.execute_script("window.__not_reloaded = true;")   # a reload would drop this
        r = bot.cli("halt", "--runtime-dir", str(rt), "--reason", "dashboard browser test", state=False)
        assert r.returncode == 0, r.stderr
        wait.until(lambda d: d.find_element(By.ID, "state").text == "HALTED")
        assert "dashboard browser test" in browser.find_element(By.ID, "reason").text
        assert browser.execute_script("return window.__not_reloaded === true;")
        assert "HALTED" in browser.find_element(By.ID, "state").get_attribute("class")
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
