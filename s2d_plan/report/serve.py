"""``s2d-plan report --serve``: the report page, live, on localhost.

Each request rebuilds the page from the history; while an executor holds the history
the read side opens its published snapshots (base + live copy, refreshed every couple of
seconds), so watching a run never takes a lock the run needs. The page reloads itself
every ``refresh_s`` seconds; plotly.js is served once at ``/plotly.js`` (cached by the
browser) rather than inlined into every refresh. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import html
import ipaddress
import sys
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
    if not _is_loopback(host):
        print(f"s2d-plan: warning: serving the report on {host}, reachable from other machines; "
              f"the report has no authentication", file=sys.stderr)
    try:
        return _BoundedServer((host, port), handler)
    except OSError as exc:
        raise S2DError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another --port)") from None


def _handler(routes: dict[str, tuple[Callable[[], bytes], str, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10.0  # a half-open connection holds a thread this long at most

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if not self.server.host_allowed(self.headers.get("Host", "")):
                self.send_error(403, "unexpected Host header")  # DNS rebinding
                return
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


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _BoundedServer(ThreadingHTTPServer):
    """At most ``max_threads`` connections served at once (the accept loop waits for a
    free one); a client that goes away mid-answer is not an error worth a traceback."""

    max_threads = 8
    request_queue_size = 128  # waiting connections queue in the kernel, not in threads

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(self.max_threads)
        self.bind_host = address[0]

    def host_allowed(self, header: str) -> bool:
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        name = name.strip().lower()
        if name in (self.bind_host.lower(), f"[{self.bind_host.lower()}]"):
            return True
        return _is_loopback(self.bind_host) and _is_loopback(name)

    def process_request(self, request, client_address) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
