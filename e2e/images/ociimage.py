#!/usr/bin/env python3
"""Builds a single-layer OCI image archive (an OCI layout in a tar) from files on disk.

The test machines reach no public registry, so the pause image, the busybox image for runc
and the Wasm test images are all made here and imported into containerd (or pushed to the
local registry).

    ociimage.py --out x.tar --name wasmpod.test/app:1 \
        --file build/hello.wasm:/hello.wasm --entrypoint /hello.wasm \
        [--cmd ARG ...] [--platform linux/amd64] [--annotation k=v]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile
import time


def blob(out, data, media_type, extra=None):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
    info.size = len(data)
    info.mtime = 0
    out.addfile(info, io.BytesIO(data))
    d = {"mediaType": media_type, "digest": digest, "size": len(data)}
    if extra:
        d.update(extra)
    return d


def layer(files):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for src, dst in files:
            parts = dst.strip("/").split("/")[:-1]
            for i in range(len(parts)):
                d = "/".join(parts[: i + 1])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    t.addfile(info)
            data = open(src, "rb").read()
            info = tarfile.TarInfo(dst.strip("/"))
            info.size = len(data)
            info.mode = 0o755 if os.access(src, os.X_OK) else 0o644
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    diff = raw.getvalue()
    return diff, gzip.compress(diff, mtime=0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--file", action="append", default=[], help="SRC:DEST")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--platform", default="linux/amd64")
    p.add_argument("--annotation", action="append", default=[], help="K=V, on the manifest")
    a = p.parse_args()

    files = [tuple(f.split(":", 1)) for f in a.file]
    diff, gz = layer(files)
    os_, arch = a.platform.split("/", 1)
    annotations = dict(kv.split("=", 1) for kv in a.annotation)
    config = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
        "architecture": arch,
        "os": os_,
        "config": {
            "Entrypoint": a.entrypoint or None,
            "Cmd": a.cmd or None,
            "Env": a.env or ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": {"wasmpod.test/name": a.name},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
        "history": [{"created_by": "wasmpod e2e/images/ociimage.py"}],
    }
    if annotations:
        config["config"]["Labels"].update(annotations)
    with tarfile.open(a.out, "w") as out:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        out.addfile(info, io.BytesIO(layout))
        cfg = blob(out, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        lay = blob(out, gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg,
            "layers": [lay],
        }
        if annotations:
            manifest["annotations"] = annotations
        man = blob(
            out,
            json.dumps(manifest, sort_keys=True).encode(),
            "application/vnd.oci.image.manifest.v1+json",
            {
                "platform": {"os": os_, "architecture": arch},
                "annotations": {
                    "io.containerd.image.name": a.name,
                    "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1],
                },
            },
        )
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [man]}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        out.addfile(info, io.BytesIO(index))


if __name__ == "__main__":
    main()
