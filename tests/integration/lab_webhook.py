"""A webhook receiver for the notifier's lab test, run inside a lab client's network namespace
(traffic stays in the lab): HTTPS with a throwaway certificate, checking each request's signature.

Run as `ip netns exec NS python -m tests.integration.lab_webhook ADDRESS PORT FOLDER`, with the HMAC
key on stdin (one line; never on a command line). The certificate is made once in FOLDER and reused,
so a receiver started again (after being killed: a dead receiver) presents the same one. It prints
one JSON line once it serves (`{"ca": PATH}`), then appends every request whose signature and
timestamp are right to FOLDER/received.jsonl, and counts the others in FOLDER/refused.
Its own HMAC check on purpose: the test must not trust the notifier's code to verify itself.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

TOLERANCE_SECONDS = 300


def certificate(folder: Path, address: str) -> tuple[Path, Path]:
    cert, key = folder / "webhook-cert.pem", folder / "webhook-key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=hardkit lab webhook", "-addext", f"subjectAltName=IP:{address}",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def main(address: str, port: int, folder: Path) -> None:
    secret = sys.stdin.readline().strip().encode()
    cert, key = certificate(folder, address)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ts, sig = self.headers.get("X-Hardkit-Timestamp", ""), self.headers.get("X-Hardkit-Signature", "")
            want = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            fresh = ts.isdigit() and abs(time.time() - int(ts)) <= TOLERANCE_SECONDS
            ok = fresh and hmac.compare_digest(want, sig)
            with lock:
                if ok:
                    with open(folder / "received.jsonl", "a") as f:
                        f.write(json.dumps(json.loads(body)) + "\n")
                else:
                    refused = folder / "refused"
                    refused.write_text(str(int(refused.read_text() if refused.exists() else "0") + 1))
            self.send_response(204 if ok else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps({"ca": str(cert)}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
