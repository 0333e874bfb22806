"""Reading back what the Locust processes recorded (loadtest/records.py, watcher.py)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.records import ENDPOINTS


@dataclass
class Records:
    reserved: dict[str, dict[str, Any]] = field(default_factory=dict)  # 201s by order id
    duplicate_201s: list[str] = field(default_factory=list)  # order ids answered 201 twice
    paid: dict[str, dict[str, Any]] = field(default_factory=dict)  # 200s to pay
    late: dict[str, dict[str, Any]] = field(default_factory=dict)  # to pay after the deadline
    answers: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    problems: Counter[tuple[str, str]] = field(default_factory=Counter)  # failures by kind
    pools: dict[str, dict[str, int]] = field(default_factory=dict)
    accounts: dict[str, set[str]] = field(default_factory=dict)  # role -> sent a public buy
    samples: list[dict[str, Any]] = field(default_factory=list)
    processes: int = 0
    # every request: start (epoch s), latency (ms), endpoint (index into ENDPOINTS), failed
    start: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    endpoint: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))

    def endpoint_name(self, index: int) -> str:
        return ENDPOINTS[index]


def read_records(record_dir: Path) -> Records:
    r = Records()
    for path in sorted(record_dir.glob("orders-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            if event["event"] == "reserved":
                if event["order_id"] in r.reserved:
                    r.duplicate_201s.append(event["order_id"])
                r.reserved[event["order_id"]] = event
            elif event["event"] == "late":
                r.late[event["order_id"]] = event
            else:
                r.paid[event["order_id"]] = event
    for path in sorted(record_dir.glob("answers-*.json")):
        data = json.loads(path.read_text())
        r.processes += 1
        for a in data["answers"]:
            r.answers[(a["endpoint"], a["role"], a["answer"])] += a["count"]
        for p in data.get("problems", []):
            r.problems[(p["endpoint"], p["problem"])] += p["count"]
        for role, users in data.get("accounts", {}).items():
            r.accounts.setdefault(role, set()).update(users)
        for name, use in data.get("pools", {}).items():
            # every process sees the whole pool (they claim lines of it): its size once
            total = r.pools.setdefault(name, {"size": 0, "taken": 0, "reused": 0, "processes": 0})
            total["size"] = max(total["size"], use.get("size", 0))
            total["taken"] += use.get("taken", 0)
            total["reused"] += use.get("reused", 0)
            total["processes"] += 1
    parts = [np.load(p) for p in sorted(record_dir.glob("requests-*.npz"))]
    if parts:
        r.start = np.concatenate([p["start"] for p in parts])
        r.ms = np.concatenate([p["ms"] for p in parts]).astype(np.float64)
        r.endpoint = np.concatenate([p["endpoint"] for p in parts])
        r.failed = np.concatenate([p["failed"] for p in parts])
    samples = record_dir / "samples.jsonl"
    if samples.exists():
        r.samples = [json.loads(line) for line in samples.read_text().splitlines() if line]
    return r
