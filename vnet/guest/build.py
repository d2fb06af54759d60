"""Build the tiny guest reproducibly: the same sources give the same bytes.

The image goes to a cache folder named by the hash of the sources and the compiler's
version, so a build is done once per change; gcc runs with fixed flags, no debug info and no
paths in the output (``objcopy -O binary`` keeps only the loaded bytes).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vnet.errors import VnetError

SOURCE_DIR = Path(__file__).with_name("tiny")
SOURCES = ("start.S", "main.c", "tiny.ld")
CFLAGS = ["-O2", "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-nostdlib", "-static",
          "-mno-red-zone", "-mgeneral-regs-only", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-fno-ident", "-Wall", "-Werror",
          "-Wl,--build-id=none", "-Wl,-T," + str(SOURCE_DIR / "tiny.ld")]
CACHE_DIR = Path(os.environ.get("VNET_CACHE_DIR", "/var/cache/vnet"))


def source_digest() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    digest.update(_compiler_version().encode())
    digest.update(" ".join(CFLAGS).encode())
    return digest.hexdigest()[:16]


@functools.cache  # a runner asks on every boot; gcc does not change under it
def _compiler_version() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0]
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise VnetError("gcc is needed to build the tiny guest: apt-get install gcc") from None


def build_tiny_guest(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Path of the flat image ``tiny-DIGEST.bin``, building it if needed."""
    cache = cache_dir or CACHE_DIR
    target = cache / f"tiny-{source_digest()}.bin"
    if target.exists() and not force:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        elf = Path(tmp) / "tiny.elf"
        flat = Path(tmp) / "tiny.bin"
        try:
            subprocess.run(["gcc", *CFLAGS, "-o", str(elf), str(SOURCE_DIR / "start.S"),
                            str(SOURCE_DIR / "main.c")], check=True, capture_output=True,
                           text=True, cwd=tmp)
            subprocess.run(["objcopy", "-O", "binary", str(elf), str(flat)], check=True,
                           capture_output=True, text=True)
        except subprocess.CalledProcessError as err:
            raise VnetError(f"building the tiny guest failed: {err.stderr.strip()}") from None
        shutil.copyfile(flat, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
    return target
