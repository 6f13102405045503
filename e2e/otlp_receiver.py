#!/usr/bin/env python3
"""A small OTLP/HTTP traces receiver for the end-to-end tests.

Every body posted to /v1/traces is checked against OpenTelemetry's own protobuf definitions
(opentelemetry-proto's ExportTraceServiceRequest; an unknown field or a wrong type is a 400),
and each span is appended to OUT as one JSON line: name, ids, parent, times, status, and its
attributes and resource attributes as plain maps.

    otlp_receiver.py --port PORT --out FILE
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def value(v):
    for kind in ("stringValue", "boolValue", "intValue", "doubleValue"):
        if kind in v:
            return v[kind]
    return v


def plain(attributes):
    return {a["key"]: value(a["value"]) for a in attributes or []}


class Receiver(BaseHTTPRequestHandler):
    out = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        try:
            # OTLP's JSON writes ids in hex where protobuf's JSON mapping expects base64;
            # the structure and types are what is checked here.
            json_format.Parse(body, ExportTraceServiceRequest())
            request = json.loads(body)
        except Exception as e:  # noqa: BLE001 - any parse failure is the sender's error
            print(f"otlp_receiver: rejected: {e}", file=sys.stderr)
            self.send_error(400, str(e)[:200])
            return
        with open(self.out, "a", encoding="utf-8") as f:
            for rs in request.get("resourceSpans", []):
                resource = plain(rs.get("resource", {}).get("attributes"))
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        f.write(json.dumps({
                            "name": span["name"],
                            "traceId": span["traceId"],
                            "spanId": span["spanId"],
                            "parentSpanId": span.get("parentSpanId", ""),
                            "start": int(span["startTimeUnixNano"]),
                            "end": int(span["endTimeUnixNano"]),
                            "status": span.get("status", {}),
                            "attributes": plain(span.get("attributes")),
                            "resource": resource,
                        }) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    Receiver.out = a.out
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Receiver)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
