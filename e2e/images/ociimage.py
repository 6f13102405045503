#!/usr/bin/env python3
"""Builds an OCI image archive (an OCI layout in a tar) from files on disk: a single-layer
container image, or a Wasm OCI artifact.

The test machines reach no public registry, so the pause image, the busybox image for runc
and the Wasm test images are all made here and imported into containerd or pushed to the
local registry (push.py, which pushes what the layout's index.json points at).

    ociimage.py --out x.tar --name wasmpod.test/app:1 \
        --file build/hello.wasm:/hello.wasm --entrypoint /hello.wasm \
        [--cmd ARG ...] [--platform linux/amd64|wasi/wasm] [--annotation k=v] [--image-index]
        [--symlink DEST:TARGET] [--fifo DEST] [--chardev DEST:MAJOR:MINOR]

    ociimage.py --out x.tar --name wasmpod.test/hello-artifact:1 \
        --wasm-layer build/hello.wasm[:MEDIA_TYPE] ...

--symlink, --fifo and --chardev put those entries in the layer, as hostile images carry them.
An image's manifest carries --annotation on itself; its config carries them as labels.
--image-index wraps the manifest in an image index naming its platform, as multi-platform
builds (`docker buildx --platform wasi/wasm`) publish them.

A Wasm artifact has the config media type application/vnd.wasm.config.v0+json and one layer
per --wasm-layer (media type application/wasm unless given), titled with the file's name.
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


def layer(files, specials=()):
    """A layer tar of regular files (SRC, DEST) and special entries (TYPE, DEST, ARG):
    ("symlink", "/h", "/"), ("fifo", "/f.wasm", None), ("chardev", "/zero", (1, 5))."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()

        def parents(dst):
            parts = dst.strip("/").split("/")[:-1]
            for i in range(len(parts)):
                d = "/".join(parts[: i + 1])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    t.addfile(info)

        for src, dst in files:
            parents(dst)
            data = open(src, "rb").read()
            info = tarfile.TarInfo(dst.strip("/"))
            info.size = len(data)
            info.mode = 0o755 if os.access(src, os.X_OK) else 0o644
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
        for kind, dst, arg in specials:
            parents(dst)
            info = tarfile.TarInfo(dst.strip("/"))
            info.mtime = 0
            info.mode = 0o644
            if kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = arg
                info.mode = 0o777
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chardev":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = arg
            t.addfile(info)
    diff = raw.getvalue()
    return diff, gzip.compress(diff, mtime=0)


WASM_CONFIG = "application/vnd.wasm.config.v0+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def write_layout(a, blobs):
    """Writes the layout; blobs(out) adds the config and layers and returns the manifest."""
    with tarfile.open(a.out, "w") as out:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        out.addfile(info, io.BytesIO(layout))
        manifest, platform = blobs(out)
        name = {
            "io.containerd.image.name": a.name,
            "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1],
        }
        man = blob(out, json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST, {"platform": platform} if platform else None)
        if getattr(a, "image_index", False):
            inner = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [man]}, sort_keys=True).encode()
            top = blob(out, inner, OCI_INDEX, {"annotations": name})
        else:
            top = dict(man, annotations=name)
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        out.addfile(info, io.BytesIO(index))


def artifact(a):
    def blobs(out):
        descs = []
        for spec in a.wasm_layer:
            src, _, media_type = spec.partition(":")
            data = open(src, "rb").read()
            title = {"annotations": {"org.opencontainers.image.title": os.path.basename(src)}}
            descs.append(blob(out, data, media_type or "application/wasm", title))
        # The name makes the config unique: CRI identifies images by their config digest.
        config = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [d["digest"] for d in descs],
            "labels": {"wasmpod.test/name": a.name},
        }
        cfg = blob(out, json.dumps(config, sort_keys=True).encode(), WASM_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": WASM_CONFIG, "config": cfg, "layers": descs}
        return manifest, None

    write_layout(a, blobs)


def image(a):
    files = [tuple(f.split(":", 1)) for f in a.file]
    specials = [("symlink", *s.split(":", 1)) for s in a.symlink]
    specials += [("fifo", f, None) for f in a.fifo]
    for c in a.chardev:
        dst, major, minor = c.rsplit(":", 2)
        specials.append(("chardev", dst, (int(major), int(minor))))
    diff, gz = layer(files, specials)
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
            "Labels": dict({"wasmpod.test/name": a.name}, **annotations),
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
        "history": [{"created_by": "wasmpod e2e/images/ociimage.py"}],
    }

    def blobs(out):
        cfg = blob(out, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        lay = blob(out, gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [lay]}
        if annotations:
            manifest["annotations"] = annotations
        return manifest, {"os": os_, "architecture": arch}

    write_layout(a, blobs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--file", action="append", default=[], help="SRC:DEST")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--symlink", action="append", default=[], help="DEST:TARGET")
    p.add_argument("--fifo", action="append", default=[], help="DEST")
    p.add_argument("--chardev", action="append", default=[], help="DEST:MAJOR:MINOR")
    p.add_argument("--platform", default="linux/amd64")
    p.add_argument("--annotation", action="append", default=[], help="K=V")
    p.add_argument("--image-index", action="store_true")
    p.add_argument("--wasm-layer", action="append", default=[], help="SRC[:MEDIA_TYPE]")
    a = p.parse_args()
    if a.wasm_layer:
        artifact(a)
    else:
        image(a)


if __name__ == "__main__":
    main()
