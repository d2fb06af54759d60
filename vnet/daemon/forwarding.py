"""IP forwarding of the host namespace, switched on while any lab needs it (NAT) and restored
to what it was when the last one goes: a file in the state dir remembers both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vnet.host import netns

KEY = "net.ipv4.ip_forward"


def _path(state_dir: Path) -> Path:
    return state_dir / "ip_forward.json"


def hold(state_dir: Path, lab: str) -> None:
    path = _path(state_dir)
    record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
        "original": netns.read_sysctl(None, KEY), "holders": []}
    if lab not in record["holders"]:
        record["holders"].append(lab)
    path.write_text(json.dumps(record))
    netns.write_sysctl(None, KEY, "1")


def release(state_dir: Path, lab: str) -> None:
    path = _path(state_dir)
    if not path.exists():
        return
    record = json.loads(path.read_text())
    record["holders"] = [h for h in record["holders"] if h != lab]
    if record["holders"]:
        path.write_text(json.dumps(record))
        return
    netns.write_sysctl(None, KEY, record["original"])
    path.unlink()
