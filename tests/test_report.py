"""`s2d-plan report`: the tiny plan run for real, its report opened in headless Chromium.

The tiny CPU plan (plans/tiny-cpu.yaml on the session's tiny models) is recommended and
executed once per module (~90 s), then run again (every stage CACHED) for a two-run
report. Charts are checked in the browser's DOM: every chart drew as many trace groups as
the page says it has, and the training curves have as many series as the history has
stages that logged them (counted here with SQL, not by the report's code).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import browser
from tests.conftest import REPO, cli_env

pytest.importorskip("trl")
pytest.importorskip("plotly")


def s2d(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2d_plan.cli", *args], text=True, capture_output=True,
                          env=cli_env(home), cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory) -> tuple[Path, list[str]]:
    """(home, [run ids]): the tiny plan executed, then executed again from the cache."""
    root = tmp_path_factory.mktemp("tinyrun")
    (root / "plans").mkdir()
    shutil.copy(REPO / "plans" / "tiny-cpu.yaml", root / "plans" / "tiny-cpu.yaml")
    (root / "tiny-models").symlink_to(tiny)
    home = root / "home"
    r = s2d(home, "recommend", str(root / "plans" / "tiny-cpu.yaml"), "-o", str(root / "graph.json"))
    assert r.returncode == 0, r.stderr
    for _ in range(2):  # the same graph twice: the second run is all cache hits
        r = s2d(home, "execute", str(root / "graph.json"))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = s2d(home, "runs", "--json")
    runs = [row["run_id"] for row in json.loads(r.stdout)]
    assert len(runs) == 2
    return home, sorted(runs)


def expected_curves(home: Path, key: str, runs: list[str]) -> int:
    """Stages of these runs whose output's metrics have ``key`` past step 0 (SQL, independently)."""
    r = s2d(home, "history", "--json", f"""
        SELECT count(*) AS n FROM stages s WHERE s.run_id IN ({', '.join("'" + x + "'" for x in runs)})
        AND EXISTS (SELECT 1 FROM metrics m WHERE m.cache_key = s.cache_key AND m.stage_id = s.stage_id
                    AND m.key = '{key}' AND m.step > 0)""")
    return json.loads(r.stdout)[0]["n"]


def test_report_of_the_tiny_run_renders_in_chromium(tiny_run, tmp_path):
    home, runs = tiny_run
    out = tmp_path / "report.html"
    r = s2d(home, "report", runs[0], "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text) and "cdn." not in text.split("</head>")[0][-2000:]
    dom, log = browser.render(out.as_uri())
    charts, attrs = browser.charts_in(dom)
    ids = {c.id for c in charts}
    assert attrs.get("data-errors") == "[]" and not browser.console_errors(log), (attrs, browser.console_errors(log))
    assert int(attrs["data-charts"]) == len(charts)
    for cid in ("objective", "gpu-hours", "memory", "curve-reward", "curve-loss", "curve-lr", "curve-signal",
                "curve-verifier", "curve-length", "eval-arith", f"pipeline-{runs[0]}", f"alternatives-{runs[0]}"):
        assert cid in ids, (cid, sorted(ids))
    for c in charts:  # every series the page built, the browser drew and painted
        assert c.series > 0 and c.traces == c.series and c.painted >= c.series, c
    by_id = {c.id: c for c in charts}
    assert by_id["curve-loss"].traces == expected_curves(home, "loss", runs[:1]) == 4  # 2 GRPO, FKL, OPD
    assert by_id["objective"].traces == 2  # predicted with its interval, measured
    assert by_id["memory"].traces == 2  # estimated, measured (the runners log their peak)
    shot = browser.screenshot(out.as_uri(), tmp_path / "report.png")
    assert browser.non_blank(shot) > 50


def test_two_runs_overlay_and_side_by_side(tiny_run, tmp_path):
    home, runs = tiny_run
    out = tmp_path / "two.html"
    r = s2d(home, "report", *runs, "-o", str(out))
    assert r.returncode == 0, r.stderr
    dom, log = browser.render(out.as_uri())
    charts, attrs = browser.charts_in(dom)
    by_id = {c.id: c for c in charts}
    assert attrs.get("data-errors") == "[]", attrs
    # the second run reused every stage from the cache: its curves are the first run's, overlaid
    assert by_id["curve-loss"].traces == expected_curves(home, "loss", runs) == 8
    assert all(f"pipeline-{run}" in by_id for run in runs)
    table = dom.split("<h2>Runs</h2>", 1)[1].split("</table>", 1)[0]
    assert all(run in table for run in runs) and table.count("<tr>") == 3


def test_png_export_writes_every_chart(tiny_run, tmp_path):
    browser.chromium()  # kaleido drives the same browser
    home, runs = tiny_run
    r = s2d(home, "report", runs[0], "-o", str(tmp_path / "r.html"), "--png", str(tmp_path / "png"))
    assert r.returncode == 0, r.stderr
    pngs = sorted((tmp_path / "png").glob("*.png"))
    sections = re.findall(r'data-chart="([^"]+)"', (tmp_path / "r.html").read_text())
    assert sorted(p.stem for p in pngs) == sorted(sections)
    assert all(browser.non_blank(p) > 10 for p in pngs)


def test_serve_refreshes_from_the_live_history(s2d_home, write_graph, start_cli, cli):
    """A run in progress, watched: the page says RUNNING, later FINISHED, without a lock."""
    from tests.conftest import sim_stage

    g = write_graph([sim_stage("slow", steps=40, sleep_s=0.25), sim_stage("after", needs=("slow",), steps=3)])
    run = start_cli("execute", str(g))
    server = start_cli("report", "--serve", "--port", "0", "--refresh", "2")
    line = server.stdout.readline()
    assert "127.0.0.1" in line and "http://127.0.0.1:" in line, line
    url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)

    def page() -> str:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.read().decode()

    deadline = time.monotonic() + 60
    first = page()
    while not ('class="status-RUNNING"' in first and 'data-chart="curve-loss"' in first) and time.monotonic() < deadline:
        time.sleep(0.3)
        first = page()
    assert 'class="status-RUNNING"' in first and 'data-chart="curve-loss"' in first
    assert "location.reload()" in first and 'src="/plotly.js"' in first
    assert run.wait(timeout=120) == 0
    second = page()
    assert 'class="status-RUNNING"' not in second and second.count('class="status-FINISHED"') >= 3  # runs row + 2 stages
    with urllib.request.urlopen(url + "plotly.js", timeout=30) as resp:
        assert len(resp.read()) > 1_000_000
    dom, _ = browser.render(url, budget_ms=1500)  # before the page's own 2 s reload
    charts, attrs = browser.charts_in(dom)
    assert attrs.get("data-errors") == "[]" and charts and all(c.traces == c.series for c in charts)


def test_report_without_history_is_a_clear_error(cli, tmp_path):
    r = cli("report", "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "no history" in r.stderr and not (tmp_path / "r.html").exists()
    r = cli("report", "nosuchrun", "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2


def test_calibration_residuals_when_the_home_holds_a_calibration(tiny_run, tmp_path):
    from s2d_plan.evidence.calibration_file import write_calibration

    home = tmp_path / "home"
    shutil.copytree(tiny_run[0], home)
    out = tmp_path / "r.html"
    assert s2d(home, "report", "-o", str(out)).returncode == 0
    assert 'data-chart="calibration"' not in out.read_text()  # no calibration file: no section
    write_calibration(home, {"outcome": {}, "costs": {}, "fit": {"runs": 1, "rmse_before": 0.1, "rmse_after": 0.05}})
    assert s2d(home, "report", "-o", str(out)).returncode == 0
    charts, attrs = browser.charts_in(browser.render(out.as_uri())[0])
    cal = [c for c in charts if c.id == "calibration"]
    assert attrs.get("data-errors") == "[]" and len(cal) == 1 and cal[0].traces == cal[0].series == 2


def _serving(tmp_path, **kw):
    from s2d_plan.report.serve import make_server, serve_in_thread
    server = make_server([], tmp_path / "home", host="127.0.0.1", port=0, **kw)
    serve_in_thread(server)
    return server, server.server_address[1]


def test_serve_refuses_a_foreign_host_header(tmp_path):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the report."""
    import http.client
    server, port = _serving(tmp_path)
    try:
        statuses = {}
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port}", f"localhost:{port}"):
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            con.request("GET", PLOTLY_PATH, headers={"Host": host})
            statuses[host] = con.getresponse().status
            con.close()
        assert statuses == {"evil.example": 403, f"evil.example:{port}": 403,
                            f"127.0.0.1:{port}": 200, f"localhost:{port}": 200}
    finally:
        server.shutdown()
        server.server_close()


def test_serve_caps_its_threads_and_is_quiet_on_disconnects(tmp_path, capfd):
    import socket
    import threading
    import time
    before = threading.active_count()
    server, port = _serving(tmp_path)
    socks = []
    try:
        for _ in range(50):  # half-open: connect, send part of a request, never finish
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\n")
            socks.append(s)
        time.sleep(0.5)
        assert threading.active_count() - before <= server.max_threads + 1
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err


PLOTLY_PATH = "/plotly.js"
