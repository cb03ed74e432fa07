"""Headless Debian chromium driven by Selenium, for the console's browser tests.

Selenium calls block, and the servers under test run in the test's event loop, so every
browser call goes through a thread (`await b.do(...)`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LAPTOP, PHONE = (1366, 900), (390, 844)


def require_browser() -> None:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")) or not Path(CHROMEDRIVER).exists():
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")


def screenshot_dir() -> Path:
    path = Path(
        os.environ.get("CONSOLE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "console-shots"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


class Browser:
    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(arg)
        options.add_argument(f"--window-size={LAPTOP[0]},{LAPTOP[1]}")
        # Given explicitly: Selenium Manager would try to download a driver.
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.shots = screenshot_dir()

    async def do(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(func, *args)

    async def get(self, url: str) -> None:
        await self.do(self.driver.get, url)

    async def wait(self, condition: Callable[[Any], Any], deadline_s: float = 15.0) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return await self.do(
            WebDriverWait(self.driver, deadline_s, poll_frequency=0.1).until, condition
        )

    async def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return await self.wait(lambda d: d.find_element(By.CSS_SELECTOR, selector))

    async def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return await self.do(self.driver.find_elements, By.CSS_SELECTOR, selector)

    async def text(self, selector: str) -> str:
        element = await self.css(selector)
        return await self.do(lambda: element.text)

    async def click(self, selector: str) -> None:
        element = await self.css(selector)
        await self.do(element.click)

    async def screenshot(self, name: str) -> None:
        """The whole page at laptop and phone width."""

        def shoot() -> None:
            for label, (width, height) in (("laptop", LAPTOP), ("phone", PHONE)):
                self.driver.set_window_size(width, height)
                full = self.driver.execute_script("return document.documentElement.scrollHeight")
                self.driver.set_window_size(width, min(max(height, int(full) + 120), 5000))
                self.driver.save_screenshot(str(self.shots / f"{name}-{label}.png"))
            self.driver.set_window_size(*LAPTOP)

        await self.do(shoot)

    def close(self) -> None:
        self.driver.quit()
