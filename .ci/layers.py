#!/usr/bin/env python3
"""Fails when a crate depends on what ARCHITECTURE.md's `layers` block forbids it.

The block is the rule and its documentation at once: each line names a crate, then the crates
it must never depend on. What counts is a crate's own dependencies (normal, dev and build) and
every one of our crates it reaches through them, so that a rule on our crates cannot be passed
round through another of them; a crate may still use wasmtime through the engine. Both
workspaces are read (the isolated host is one of its own).
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = [ROOT / "Cargo.toml", ROOT / "shim" / "isolated" / "Cargo.toml"]


def rules():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    try:
        block = text.split("```layers\n", 1)[1].split("```", 1)[0]
    except IndexError:
        sys.exit("ARCHITECTURE.md has no ```layers block")
    out = {}
    for line in block.splitlines():
        words = line.split()
        if words:
            out[words[0]] = set(words[1:])
    return out


def packages():
    """Each of our crates with the names of its direct dependencies and its path dependencies."""
    found = {}
    for manifest in MANIFESTS:
        meta = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps", "--manifest-path", str(manifest)],
            check=True,
            capture_output=True,
            text=True,
        )
        for pkg in json.loads(meta.stdout)["packages"]:
            deps = pkg["dependencies"]
            found[pkg["name"]] = (
                {d["name"] for d in deps},
                {d["name"] for d in deps if d.get("path")},
            )
    return found


def reached(name, found):
    """The crate's own dependencies and all of our crates it reaches."""
    direct, local = found[name]
    out, seen, todo = set(direct), set(), list(local)
    while todo:
        dep = todo.pop()
        if dep in seen or dep not in found:
            continue
        seen.add(dep)
        out.add(dep)
        todo.extend(found[dep][1])
    return out


def main():
    found = packages()
    broken = []
    for crate, forbidden in rules().items():
        if crate not in found:
            broken.append(f"{crate}: named in ARCHITECTURE.md but no such crate")
            continue
        for dep in sorted(reached(crate, found) & forbidden):
            broken.append(f"{crate} depends on {dep}, which ARCHITECTURE.md forbids it")
    for line in broken:
        print(f"layers: {line}", file=sys.stderr)
    if broken:
        sys.exit(1)
    print(f"layers: {len(rules())} crates keep to ARCHITECTURE.md")


if __name__ == "__main__":
    main()
