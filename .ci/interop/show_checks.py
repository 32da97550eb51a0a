"""Print the FAILURE/WARNING checks of a conformance run (its checks.json files under DIR)."""

import glob
import json
import sys

for path in sorted(glob.glob(sys.argv[1] + "/**/checks.json", recursive=True)):
    with open(path) as f:
        checks = json.load(f)
    for c in checks:
        if c.get("status") in ("FAILURE", "WARNING"):
            msg = (c.get("errorMessage") or c.get("description") or "")[:3000]
            msg = msg.replace("\n", "\n              ")
            print(f"      {c['status']:7} {c['id']}: {msg}")
