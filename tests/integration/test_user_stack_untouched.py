"""After every other test: the stack the user's demo and console use holds exactly what it held before the
suite, and its review console (in Chromium) offers the same queue and lists the same models.

The suite runs against its own stack (``.stack-test``); these checks are what shows it wrote nothing to the
user's (``.stack``). `make test` starts both, so in CI they always run."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.user_stack import BEFORE_SUITE, BeforeSuite, console, fingerprint, queue_ids, user_env_file

pytestmark = pytest.mark.after_suite


@pytest.fixture
def before(request: pytest.FixtureRequest) -> BeforeSuite:
    found = request.config.stash.get(BEFORE_SUITE, None)
    if found is None:
        pytest.skip(f"no user stack running ({user_env_file()}): nothing to compare (`make test` starts one)")
    return found


def test_the_users_stack_holds_exactly_what_it_held_before_the_suite(before: BeforeSuite) -> None:
    changed = before.fingerprint.differences(fingerprint(before.stack))
    assert not changed, "the suite wrote to the user's stack:\n" + "\n".join(changed)


def test_the_users_console_offers_the_same_queue_and_models_as_before(
    before: BeforeSuite, browser: Browser
) -> None:
    with console(before.stack) as (base, cookie):
        context = browser.new_context()
        context.add_cookies([{"name": "cifake_session", "value": cookie, "url": base}])
        page = context.new_page()
        page.goto(base + "/review")
        links = page.locator("a[href^='/review/item/']")
        hrefs = links.evaluate_all("els => els.map(e => e.getAttribute('href'))")
        page.goto(base + "/review/models")
        models = page.locator("tr[data-version]").evaluate_all("els => els.map(e => e.dataset.version)")
        context.close()
    assert queue_ids(hrefs) == before.console.queue
    assert models == before.console.models
