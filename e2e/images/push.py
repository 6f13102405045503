#!/usr/bin/env python3
"""Pushes an OCI image archive (the layout ociimage.py writes) to a registry over plain HTTP,
through the distribution API alone: images, image indexes and Wasm OCI artifacts alike, with
their manifests byte for byte (so digests and media types are kept).

    push.py LAYOUT.tar HOST:PORT/NAME:TAG

Only for local test registries (no TLS, no auth): the e2e test bed and the kind test.
"""
import json
import sys
import tarfile
import urllib.error
import urllib.request


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def push_blob(base, name, digest, data):
    status, _, _ = request("HEAD", f"{base}/v2/{name}/blobs/{digest}")
    if status == 200:
        return
    status, headers, body = request("POST", f"{base}/v2/{name}/blobs/uploads/")
    if status != 202:
        sys.exit(f"push.py: starting the upload of {digest} failed ({status}): {body[:200]!r}")
    location = headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    status, _, body = request("PUT", f"{location}{sep}digest={digest}", data,
                              {"Content-Type": "application/octet-stream"})
    if status != 201:
        sys.exit(f"push.py: uploading {digest} failed ({status}): {body[:200]!r}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    archive, ref = sys.argv[1], sys.argv[2]
    host, _, rest = ref.partition("/")
    name, _, tag = rest.rpartition(":")
    base = f"http://{host}"
    with tarfile.open(archive) as t:
        def blob(digest):
            return t.extractfile("blobs/sha256/" + digest.split(":", 1)[1]).read()

        index = json.loads(t.extractfile("index.json").read())
        (top,) = index["manifests"]

        def push_manifest(desc, reference):
            data = blob(desc["digest"])
            doc = json.loads(data)
            for child in doc.get("manifests", []):  # an image index: its manifests first
                push_manifest(child, child["digest"])
            for d in [doc.get("config")] + doc.get("layers", []):
                if d:
                    push_blob(base, name, d["digest"], blob(d["digest"]))
            status, _, body = request("PUT", f"{base}/v2/{name}/manifests/{reference}", data,
                                      {"Content-Type": desc["mediaType"]})
            if status != 201:
                sys.exit(f"push.py: putting manifest {desc['digest']} failed ({status}): {body[:300]!r}")

        push_manifest(top, tag)


if __name__ == "__main__":
    main()
