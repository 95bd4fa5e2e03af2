"""tools/offline_tiktoken.py writes the very file tiktoken would download."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The SHA-256 that tiktoken checks each encoding's file against (tiktoken_ext/openai_public.py), and the
# SHA-1 of its address that the cached file is named.
EXPECTED = {
    "o200k_base": ("446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d", "fb374d419588a4632f3f557e76b4b70aebbca790"),
    "cl100k_base": ("223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7", "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"),
}


@pytest.mark.parametrize("encoding", sorted(EXPECTED))
def test_the_cache_file_is_tiktokens(encoding: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "offline_tiktoken.py"), str(tmp_path), "--encoding", encoding],
        capture_output=True, text=True, check=True,
    )
    sha256, name = EXPECTED[encoding]
    assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == sha256
    assert result.stdout.strip().endswith(sha256)
