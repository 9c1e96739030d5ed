"""Machine, versions and command line for benchmark reports (every figure carries them)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions(*packages: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine_info(*packages: str) -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": _gpu_name(),
        "versions": versions("skutag", *packages),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown_header(info: dict[str, object]) -> str:
    version_text = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ""
    return (
        f"- machine: {info['cpu']}, {info['cores']} cores{gpu}\n- versions: {version_text}\n"
        f"- command: `{info['command']}`\n- date: {info['date']}\n"
    )


def _gpu_name() -> str | None:
    if not os.path.exists("/dev/nvidiactl"):
        return None
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None
