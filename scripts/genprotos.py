"""Generate Python code, gRPC stubs and typed stubs from protos/.

    python scripts/genprotos.py          # regenerate in place
    python scripts/genprotos.py --check  # exit 1 if the committed code is stale

Generated files sit beside their .proto files under protos/, so the import
path is the proto package (``cardlink.vault.v1.vault_pb2``).
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi", "__init__.py")


def _include_paths() -> list[str]:
    import google.api  # googleapis-common-protos ships google/api/*.proto

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(next(iter(google.api.__path__))).parent.parent
    return [str(PROTOS), str(wkt), str(googleapis)]


def _generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = ["protoc", *(f"-I{p}" for p in _include_paths())]
    args += [f"--python_out={out}", f"--grpc_python_out={out}"]
    args += [f"--mypy_out={out}", f"--mypy_grpc_out={out}", *sources]
    output: list[str] = []
    with _quiet(output):
        status = protoc.main(args)
    if status != 0:
        raise SystemExit("protoc failed:\n" + "".join(output))
    for package in {out / Path(s).parent for s in sources}:
        for folder in [package, *package.parents]:
            if folder == out or out not in folder.parents:
                break
            (folder / "__init__.py").write_text('"""Generated from protos/; do not edit."""\n')


@contextlib.contextmanager
def _quiet(output: list[str]) -> Iterator[None]:
    """Hold back what protoc and its plugins print (mypy-protobuf names every file
    it writes) at the file-descriptor level, where the plugins write; the
    caller shows it only when generation fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+") as captured:
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            captured.seek(0)
            output.append(captured.read())


def _generated_files(base: Path) -> set[Path]:
    return {
        p.relative_to(base)
        for p in base.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        _generate(fresh)
        wanted = _generated_files(fresh)
        present = _generated_files(PROTOS)
        if check:
            stale = sorted(
                str(f)
                for f in wanted | present
                if f not in wanted
                or f not in present
                or not filecmp.cmp(fresh / f, PROTOS / f, shallow=False)
            )
            if stale:
                print("generated code is stale; run `make protos`:", *stale, sep="\n  ")
                return 1
            print(f"generated code is up to date ({len(wanted)} files)")
            return 0
        for f in present - wanted:
            (PROTOS / f).unlink()
        for f in wanted:
            (PROTOS / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / f, PROTOS / f)
        print(f"generated {len(wanted)} files under protos/")
        return 0


if __name__ == "__main__":
    sys.exit(main())
