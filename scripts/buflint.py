"""Lint protos/ with buf, and check them for breaking changes against main.

    python scripts/buflint.py                  # lint + breaking against `main`
    python scripts/buflint.py --against HEAD   # breaking against another git ref
    python scripts/buflint.py --no-breaking    # lint only

There is no network here, so buf cannot fetch googleapis from the BSR. Instead
protoc (grpc_tools) builds a descriptor image the same way `make protos` does,
resolving `google/api/*.proto` from the googleapis-common-protos package and
`google/protobuf/*.proto` from grpc_tools, with source info so comment rules
work. buf lints that image, restricted with --path to our own files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

# Run as a file (`python scripts/buflint.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.genprotos import PROTOS, ROOT, _include_paths

OWN_PACKAGE_DIR = "cardlink"

# STANDARD plus COMMENTS (AIP-192: every element is documented), minus rules
# that contradict Google AIP standard methods:
# - RPC_RESPONSE_STANDARD_NAME / RPC_REQUEST_RESPONSE_UNIQUE: AIP-131/135
#   have Get return the resource itself and Delete return google.protobuf.Empty.
# - SERVICE_SUFFIX: AIP names services after what they are (`TokenVault`);
#   googleapis itself has `Publisher`, `Subscriber`, `KeyManagementService`.
LINT_CONFIG = {
    "version": "v2",
    "lint": {
        "use": ["STANDARD", "COMMENTS"],
        "except": ["RPC_RESPONSE_STANDARD_NAME", "RPC_REQUEST_RESPONSE_UNIQUE", "SERVICE_SUFFIX"],
    },
}
# FILE is buf's strictest category: it also protects the generated Python
# (a moved message or a renamed field breaks importers, not only the wire).
BREAKING_CONFIG = {"version": "v2", "breaking": {"use": ["FILE"]}}


def _buf() -> str:
    # buf-bin installs the binary next to the interpreter; prefer it to any other buf.
    beside = Path(sys.executable).parent / "buf"
    found = str(beside) if beside.is_file() else shutil.which("buf")
    if found is None:
        raise SystemExit("buf not found: install the dev dependencies (`make venv`)")
    return found


def build_image(source_root: Path, out: Path) -> bool:
    """Compile every .proto under source_root into a FileDescriptorSet; False if none."""
    sources = sorted(str(p.relative_to(source_root)) for p in source_root.rglob("*.proto"))
    if not sources:
        return False
    # The same imports as `make protos`, with source_root in place of protos/.
    includes = [str(source_root), *(p for p in _include_paths() if p != str(PROTOS))]
    args = ["protoc", *(f"-I{p}" for p in includes)]
    args += ["--include_imports", "--include_source_info", f"--descriptor_set_out={out}"]
    if protoc.main([*args, *sources]) != 0:
        raise SystemExit(f"protoc failed on {source_root}")
    return True


def _git(git: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [git, "-C", str(ROOT), *args]
    return subprocess.run(command, capture_output=True, check=False)  # noqa: S603 - no shell


def _export_ref(ref: str, dest: Path) -> bool:
    """Write protos/ as committed at `ref` into dest; False if there is no such ref."""
    git = shutil.which("git")
    if git is None or _git(git, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode:
        return False
    listing = _git(git, "ls-tree", "-r", "--name-only", ref, "--", "protos").stdout.decode().split()
    for name in (n for n in listing if n.endswith(".proto")):
        target = dest / Path(name).relative_to("protos")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_git(git, "show", f"{ref}:{name}").stdout)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--against", default="main", help="git ref for buf breaking (default: main)"
    )
    parser.add_argument("--no-breaking", action="store_true", help="skip buf breaking")
    options = parser.parse_args()
    buf = _buf()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.binpb"
        if not build_image(PROTOS, image):
            print("buf: no .proto files under protos/")
            return 0
        restrict = ["--path", OWN_PACKAGE_DIR]
        lint = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [buf, "lint", str(image), "--config", json.dumps(LINT_CONFIG), *restrict], check=False
        )
        if lint.returncode != 0:
            return lint.returncode
        print("buf lint: clean")
        if options.no_breaking:
            return 0
        old_root = Path(tmp) / "against"
        old_image = Path(tmp) / "against.binpb"
        if not _export_ref(options.against, old_root) or not build_image(old_root, old_image):
            print(f"buf breaking: skipped (no protos at git ref {options.against!r})")
            return 0
        breaking = subprocess.run(  # noqa: S603
            [
                buf,
                "breaking",
                str(image),
                "--against",
                str(old_image),
                "--config",
                json.dumps(BREAKING_CONFIG),
                *restrict,
            ],
            check=False,
        )
        if breaking.returncode != 0:
            print(
                f"buf breaking: the change above breaks the contract at {options.against!r};"
                " within v1 only add (AIP-180), or start a v2 package"
            )
            return breaking.returncode
        print(f"buf breaking: no breaking change against {options.against}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
