#!/usr/bin/env bash
# Fetches the checkpoints that hw1_1.sh and hw1_2.sh use:  bash hw1_download.sh
#
# A template: fill in CHECKPOINTS below, one line "<file name> <URL> <SHA-256>" per checkpoint
# (sha256sum FILE prints the hash; the URL must serve the file itself, e.g. a GitHub release asset).
# Files land in $HW1_CHECKPOINT_DIR, by default checkpoints/ beside this script. Each is downloaded
# to a hidden temporary file there, checked against its SHA-256 and only then renamed into place,
# so a failed, interrupted or corrupted download never leaves a file that looks complete, and a
# file already there is replaced only by a verified one. A file that is there and matches its
# hash is not fetched again. Exit status 1 if any file failed.
set -euo pipefail

CHECKPOINTS="
p2.pth  https://FILL-IN/p2.pth  FILL-IN-SHA256
"
# Optional: a P1 model that hw1_1.sh then uses instead of the shipped model A.
#   p1.pth  https://FILL-IN/p1.pth  FILL-IN-SHA256

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 - "${HW1_CHECKPOINT_DIR:-$here/checkpoints}" "$CHECKPOINTS" <<'PY'
import hashlib
import os
import signal
import sys
import tempfile
import urllib.request

dest, table = sys.argv[1], sys.argv[2]
entries = [line.split() for line in table.splitlines() if line.strip()]
if not entries or any(len(e) != 3 or "FILL-IN" in " ".join(e) for e in entries):
    sys.exit("error: hw1_download.sh: fill in CHECKPOINTS with '<file name> <URL> <SHA-256>' lines first")
# unwind on SIGTERM and Ctrl-C, so that the temporary file is removed; one line, no traceback


def stop(signum, frame):
    print("interrupted" if signum == signal.SIGINT else "terminated", file=sys.stderr)
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


try:
    os.makedirs(dest, exist_ok=True)
except OSError as e:
    sys.exit(f"error: {dest}: {e}")
failed = 0
for name, url, expected in entries:
    target, expected = os.path.join(dest, name), expected.lower()
    if os.path.isfile(target) and sha256_of(target) == expected:
        print(f"{target}: already there, SHA-256 matches")
        continue
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dest)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise ValueError(f"SHA-256 is {digest.hexdigest()}, expected {expected}; {target} not written")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        print(f"{target}: downloaded, SHA-256 matches")
    except (OSError, ValueError) as e:  # urllib's URLError and HTTPError are OSErrors
        print(f"error: {url}: {e}", file=sys.stderr)
        failed = 1
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
sys.exit(failed)
PY
