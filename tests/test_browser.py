"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run`.

Opens a plan's "why" page, checks that the rationale and the graph are visible, clicks into the
graph, takes a screenshot; times every page; asserts that no request leaves 127.0.0.1.

Environment: ``DISCOVERY_BROWSER_RUN`` points the test at another run directory (e.g. the bundled
``runs/demo``) instead of the tiny fixture run; ``DISCOVERY_SCREENSHOTS`` names a folder for a
screenshot of every page (``docs/screenshots`` in the README); page timings are printed and
written to ``page_timings.json`` there (or in the test's temp folder).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
APP = Path(__file__).resolve().parent.parent / "app.py"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = [("", "Overview"), ("hypotheses", "Hypotheses"), ("why", "Plan — why was it proposed?"),
         ("features", "Features"), ("graph", "Attribution graph"), ("feedback", "Feedback"),
         ("reports", "Reports and exports")]

# outside CI a missing browser skips the test; under CI (.ci/run sets CI=1) it fails
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tiny_run, tmp_path):
    run = Path(os.environ.get("DISCOVERY_BROWSER_RUN") or tiny_run)
    port = _free_port()
    env = dict(os.environ, DISCOVERY_RUN=str(run.resolve()),
               DISCOVERY_FEEDBACK_URL=f"sqlite:///{tmp_path / 'fb.sqlite'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
         "--client.toolbarMode", "viewer"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{base}/_stcore/health", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not start within 60 s")
    yield base, run
    proc.terminate()
    proc.wait(timeout=10)


def _graph_path(run: Path, plan: dict):
    """The subgraph the plan page draws (same function as the app) and the rationale's refs."""
    from discovery.io.graph_files import load_graph
    from discovery.pl.figures import subgraph_around

    hyps = json.loads((run / "hypotheses.json").read_text())["hypotheses"]
    h = next(h for h in hyps if h["id"] == plan["hypothesis"])
    g = load_graph(run / "graphs" / f"{h['population_graph']}.json")
    refs = {n for st in plan["rationale"] for n in st["refs"]["nodes"]}
    return subgraph_around(g, sorted(refs)), refs


_CY_STATE = """() => {
  const host = [...document.querySelectorAll('div')].find(d => d._cyreg && d._cyreg.cy);
  if (!host) return null;
  const cy = host._cyreg.cy;
  const pos = {};
  cy.nodes().forEach(n => { const p = n.renderedPosition(); pos[n.id()] = [p.x, p.y]; });
  return {nodes: cy.nodes().length, edges: cy.edges().length,
          refs: cy.nodes('.ref').map(n => n.id()), positions: pos};
}"""


def _cytoscape_state(page) -> dict:
    """Nodes, edges, outlined refs and on-screen positions of the Cytoscape graph on the page,
    read from the component's own Cytoscape instance inside its iframe."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for frame in page.frames:
            try:
                state = frame.evaluate(_CY_STATE)
            except Exception:  # noqa: BLE001 - a frame without the component, or reloading
                continue
            if state and state["nodes"]:
                return state
        page.wait_for_timeout(300)
    pytest.fail("no Cytoscape graph with nodes was drawn on the plan page")
    return {}


def test_why_page_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    base, run = server
    plans = json.loads((run / "plans.json").read_text())["plans"]
    out = Path(os.environ.get("DISCOVERY_SCREENSHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    timings: dict[str, float] = {}
    profile = tmp_path / "profile"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        ctx.on("request", lambda r: requests.append(r.url))
        page = ctx.new_page()
        # first load (warms caches), then the plan's "why" page
        page.goto(f"{base}/", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Overview").wait_for(timeout=60_000)
        page.goto(f"{base}/why?plan={plans[0]['id']}", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Rationale chain").wait_for(timeout=60_000)
        claim = plans[0]["rationale"][0]["claim"]
        page.get_by_text(claim[:60], exact=False).first.wait_for(timeout=30_000)
        assert page.get_by_text(claim[:60], exact=False).first.is_visible()
        # the whole rationale chain is on the page, step by step
        for step in plans[0]["rationale"]:
            assert page.get_by_text(step["claim"][:50], exact=False).first.is_visible(), step
        frame = page.frame_locator("iframe[title*='cytoscape']").first
        # Cytoscape.js stacks canvases; the selection layer on top receives the pointer
        canvas = frame.locator("canvas[data-id='layer0-selectbox']")
        canvas.wait_for(timeout=30_000)
        assert canvas.is_visible()
        box = canvas.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100
        # what Cytoscape drew is the plan's graph path: same nodes, edges and red-outlined refs
        expected, refs = _graph_path(run, plans[0])
        drawn = _cytoscape_state(page)
        assert drawn["nodes"] == expected.number_of_nodes() > 1, drawn
        assert drawn["edges"] == expected.number_of_edges() > 0, drawn
        assert set(drawn["refs"]) == refs & set(expected), drawn
        # clicking a referenced feature opens its details (edges with intervals) below
        details = page.get_by_text("incoming edges (strongest", exact=False)
        assert details.count() == 0
        features = sorted(n for n in refs if n in drawn["positions"]
                          and expected.nodes[n].get("kind") == "feature")
        target = (features or sorted(n for n in refs if n in drawn["positions"]))[0]
        x, y = drawn["positions"][target]
        canvas.click(position={"x": x, "y": y})
        details.first.wait_for(timeout=30_000)
        page.screenshot(path=str(out / "why.png"), full_page=True)
        assert (out / "why.png").stat().st_size > 10_000
        # every page after the first load: time until its title is visible
        for path, title in PAGES:
            t0 = time.perf_counter()
            page.goto(f"{base}/{path}", wait_until="domcontentloaded")
            page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            timings[path or "overview"] = round(time.perf_counter() - t0, 2)
            page.screenshot(path=str(out / f"{path or 'overview'}.png"), full_page=False)
        ctx.close()
    (out / "page_timings.json").write_text(json.dumps(timings, indent=1))
    print("page timings (s):", timings)
    outside = [u for u in requests
               if not u.startswith((base, "data:", "blob:", "about:", "chrome-extension:"))]
    assert not outside, f"requests left 127.0.0.1: {outside[:10]}"
    assert all(v < 30 for v in timings.values()), timings
    shutil.rmtree(profile, ignore_errors=True)
