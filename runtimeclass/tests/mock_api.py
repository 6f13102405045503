# A stand-in for the Kubernetes API server (none can run on these machines): serves one Node,
# applies JSON merge patches to its labels, logs each request.
import http.server, json, sys
labels = {}
log = open(sys.argv[2], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def node(self):
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": labels}}
    def reply(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_GET(self):
        log.write(f"GET {self.path}\n")
        self.reply(200, self.node()) if self.path.startswith("/api/v1/nodes/node-a") else self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
    def do_PATCH(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        log.write(f"PATCH {self.path} {self.headers['Content-Type']} {json.dumps(body, sort_keys=True)}\n")
        for k, v in body.get("metadata", {}).get("labels", {}).items():
            if v is None: labels.pop(k, None)
            else: labels[k] = v
        self.reply(200, self.node())
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
