#!/usr/bin/env bash
# The training corpus of models/wdmoe-tiny-mixtral: the reStructuredText
# sources of the Python 3.11 documentation (English prose with code examples),
# as Debian ships them in the package python3.11-doc (PSF License Version 2;
# /usr/share/doc/python3.11-doc/copyright in the package).
#
#   bash models/train/make_corpus.sh [OUT_DIR]     (default: .corpus, git-ignored)
#
# Writes OUT_DIR/python-3.11-docs.jsonl: one JSON object per source file,
# {"path": "library/os.rst.txt", "text": "..."}, sorted by path, and
# OUT_DIR/SOURCE with the package name, version and sha256 of the .deb.
set -euo pipefail
out=${1:-.corpus}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download python3.11-doc >/dev/null)
deb=$(ls "$tmp"/python3.11-doc_*.deb)
dpkg -x "$deb" "$tmp/x"
src="$tmp/x/usr/share/doc/python3.11/html/_sources"
python3 - "$src" "$out/python-3.11-docs.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
paths = []
for root, _, files in os.walk(src):
    for f in files:
        if f.endswith(".rst.txt"):
            paths.append(os.path.relpath(os.path.join(root, f), src))
with open(dst, "w") as out:
    for p in sorted(paths):
        with open(os.path.join(src, p), encoding="utf-8") as f:
            out.write(json.dumps({"path": p, "text": f.read()}) + "\n")
print(len(paths), "files ->", dst)
PY
{
  echo "package: python3.11-doc"
  echo "version: $(dpkg-deb -f "$deb" Version)"
  echo "sha256: $(sha256sum "$deb" | cut -d' ' -f1)"
  echo "license: PSF License Version 2 (see the package's copyright file)"
} >"$out/SOURCE"
cat "$out/SOURCE"
