"""A stand-in for ClickHouse's HTTP interface over chDB (ClickHouse 26.x in-process), so
the ClickHouse sink's paths for current servers run against a real current engine: the
transport is this small server, the SQL engine, formats and table engines are ClickHouse's.

    python3 chdb_http.py PORT DATA_DIR

Answers `GET /ping` with `Ok.`; `POST /` runs the body as a statement, or — with
`?query=INSERT … FORMAT JSONEachRow` — the statement with the body as its data. Errors are
HTTP 500 with ClickHouse's exception text, as a server answers them. One request at a time
(a chDB session is not shared between threads)."""

import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chdb import session

LOCK = threading.Lock()
SESSION = None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/ping"):
            self.answer(200, "Ok.\n")
        else:
            self.answer(404, "not found")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        params = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        query = params.get("query", [None])[0]
        sql = body if query is None else query + "\n" + body
        with LOCK:
            try:
                result = SESSION.query(sql, "TabSeparated")
                text = result.data() if result is not None else ""
            except Exception as e:  # chDB raises ClickHouse's exception text
                self.answer(500, str(e))
                return
        self.answer(200, text)


def main():
    global SESSION
    port, data = int(sys.argv[1]), sys.argv[2]
    SESSION = session.Session(data)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
