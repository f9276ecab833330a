"""``s2d-plan report --serve``: the report page, live, on localhost.

Each request rebuilds the page from the history; while an executor holds the history
the read side opens its published snapshots (base + live copy, refreshed every couple of
seconds), so watching a run never takes a lock the run needs. The page reloads itself
every ``refresh_s`` seconds; plotly.js is served once at ``/plotly.js`` (cached by the
browser) rather than inlined into every refresh. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from s2d_plan.errors import S2DError

PLOTLY_URL = "/plotly.js"


def make_server(runs: list[str], home: str | Path | None, host: str = "127.0.0.1", port: int = 8765,
                refresh_s: float = 5.0) -> ThreadingHTTPServer:
    """A server (not yet serving) for the report of ``runs`` (the newest run when none)."""
    import plotly.offline

    from s2d_plan.report import make_report, page_title, render_html

    plotly_js = plotly.offline.get_plotlyjs().encode()

    def page() -> bytes:
        try:
            rep = make_report(runs, home)
            return render_html(rep, page_title(rep), plotly_src=PLOTLY_URL, refresh_s=refresh_s).encode()
        except S2DError as exc:  # no history or no run yet: say so, and keep polling
            return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>s2d-plan report</title></head><body>"
                    f"<p>{html.escape(str(exc))}</p><p>retrying every {refresh_s:g}s</p>"
                    f"<script>setTimeout(function () {{ location.reload(); }}, {int(refresh_s * 1000)});"
                    f"</script></body></html>").encode()

    handler = _handler({"/": (page, "text/html; charset=utf-8", "no-store"),
                        PLOTLY_URL: (lambda: plotly_js, "application/javascript", "max-age=86400")})
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise S2DError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another --port)") from None


def _handler(routes: dict[str, tuple[Callable[[], bytes], str, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's method name (pep8-naming is not enabled)
            route = routes.get(self.path.split("?", 1)[0]) or (routes["/"] if self.path in ("/index.html",) else None)
            if route is None:
                self.send_error(404)
                return
            make, kind, cache = route
            body = make()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:  # the terminal is for the CLI's own lines
            pass

    return Handler


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
