"""The web chat page at / in Debian's headless Chromium (driven by selenium
through Debian's chromedriver: nothing is downloaded): the page lists the
models, a message typed and sent gets a streamed answer with its speed, and
the page loads nothing from the network.

Run: spec/.venv/bin/python -m unittest -v test_web   (in spec/serve; ctest -L serve)
"""
import os
import shutil
import tempfile
import unittest

from serve_harness import Server
from test_bad_input import stop_server

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class TestWebChat(unittest.TestCase):
    srv = driver = None

    @classmethod
    def setUpClass(cls):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        cls.srv = Server("-m", "smollm2", "--slots", "2", name="web").start()
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--user-data-dir=" + tempfile.mkdtemp(prefix="lumen-chromium-")):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        cls.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)

    @classmethod
    def tearDownClass(cls):
        if cls.driver is not None:
            cls.driver.quit()
        if cls.srv is not None:
            stop_server(cls.srv)

    def test_chat_streams_an_answer(self):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        d = self.driver
        d.get(self.srv.base_url + "/")
        wait = WebDriverWait(d, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        self.assertEqual([o.text for o in d.find_elements(By.CSS_SELECTOR, "#model option")], ["smollm2"])
        # greedy, so the answer is known (a number field's clear() is unreliable in headless Chromium)
        d.execute_script("document.getElementById('temperature').value = '0';"
                         "document.getElementById('max_tokens').value = '24'")
        box = d.find_element(By.ID, "input")
        box.send_keys("What is the capital of France?")
        d.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".stats"))
        answer = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text
        # the page's greedy answer is the API's (the DOM folds trailing white space)
        import json
        st, _, body = self.srv.post_json("/v1/chat/completions", {"model": "smollm2", "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        want = json.loads(body)["choices"][0]["message"]["content"]
        self.assertTrue(answer)
        self.assertEqual(answer.strip(), want.strip())
        stats = d.find_element(By.CSS_SELECTOR, ".stats").text
        self.assertRegex(stats, r"\d+ tokens, [\d.]+ tok/s, first token after \d+ ms")
        # a second turn sees the first (the conversation goes along)
        box.send_keys("And of Italy?")
        d.find_element(By.ID, "send").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".stats")) == 2)
        self.assertEqual(len(d.find_elements(By.CSS_SELECTOR, ".msg.user")), 2)

    def test_nothing_from_the_network(self):
        import json
        d = self.driver
        d.get(self.srv.base_url + "/")
        urls = []
        for entry in d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        urls = [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:"))]  # not the browser's own chrome:// pages
        self.assertTrue(urls)
        for u in urls:
            self.assertTrue(u.startswith(self.srv.base_url), u)


if __name__ == "__main__":
    unittest.main()
