"""Write tiktoken's cache of an encoding from the vocabulary bpe-openai ships, so that tools that tokenize
with tiktoken (aiperf's ``--tokenizer builtin``) run with no download.

    python tools/offline_tiktoken.py DIR [--encoding o200k_base]
    TIKTOKEN_CACHE_DIR=DIR aiperf profile ... --tokenizer builtin

tiktoken keeps an encoding's file under the SHA-1 of the address it downloads it from, one
``base64(token) rank`` line per token, and checks the file's SHA-256 when it reads it: the file written
here is the same file, byte for byte, so the check passes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import warnings
from pathlib import Path

ADDRESS = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def write(directory: Path, encoding: str) -> Path:
    """The cache file of ``encoding`` in ``directory``, written."""
    with warnings.catch_warnings():
        # bpe-openai reads its vocabularies with a deprecated importlib.resources call.
        warnings.simplefilter("ignore", DeprecationWarning)
        from bpe_openai import registry

        ranks: dict[bytes, int] = getattr(registry, encoding)()["mergeable_ranks"]
    lines = sorted(ranks.items(), key=lambda item: item[1])
    data = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in lines).encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / hashlib.sha1(ADDRESS.format(encoding).encode()).hexdigest()
    path.write_bytes(data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--encoding", default="o200k_base", choices=["o200k_base", "cl100k_base"])
    args = parser.parse_args()
    path = write(args.directory, args.encoding)
    print(f"{path}: {args.encoding}, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
