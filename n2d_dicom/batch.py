"""Where ``n2d denoise`` writes each output when it is given several inputs or folders.

Two forms, told apart by the options alone, so a path never changes meaning with what lies on
disk: without ``--out-dir`` and ``--out-suffix`` the command takes exactly ``IN OUT``, as it
always has; with either, every path is an input (a NIfTI file, or a folder searched recursively)
and each output's name follows from its input's: ``--out-dir DIR`` puts it in ``DIR`` (a folder's
files keep their place below it), ``--out-suffix TEXT`` adds ``TEXT`` before ``.nii``/``.nii.gz``,
and both together do both. An output never overwrites an input, and no two inputs share an output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from n2d_dicom.errors import N2DInputError
from n2d_dicom.nifti_io import NIFTI_SUFFIXES, nifti_suffix

Pair = tuple[Path, Path]


def renamed(source: Path, folder: Path, suffix: str) -> Path:
    """``source``'s name in ``folder``, with ``suffix`` before its ``.nii``/``.nii.gz``."""
    extension = nifti_suffix(source)
    return folder / f"{source.name[: -len(extension)]}{suffix}{extension}"


def _is_previous_output(path: Path, suffix: str) -> bool:
    """A file an earlier run with the same ``--out-suffix`` wrote beside its input."""
    return bool(suffix) and path.name[: -len(nifti_suffix(path))].endswith(suffix)


def folder_inputs(folder: Path, out_dir: Path | None, suffix: str) -> list[Path]:
    """The NIfTI files below ``folder``, in name order, leaving out hidden files (an interrupted
    write's temporary file), anything below ``out_dir``, and earlier outputs of the same suffix."""
    inside = out_dir.resolve() if out_dir is not None else None
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not path.name.endswith(NIFTI_SUFFIXES):
            continue
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if inside is not None and path.resolve().is_relative_to(inside):
            continue
        if not _is_previous_output(path, suffix):
            found.append(path)
    return found


def output_pairs(paths: Sequence[Path], out_dir: Path | None, out_suffix: str | None) -> list[Pair]:
    """(input, output) for each input, by the rules above; raises :class:`N2DInputError` for a
    command line that does not say where outputs go, or says it ambiguously."""
    if out_dir is None and out_suffix is None:
        return [_single_pair(paths)]
    suffix = out_suffix or ""
    pairs: list[Pair] = []
    for path in paths:
        if path.is_dir():
            files = folder_inputs(path, out_dir, suffix)
            if not files:
                raise N2DInputError(f"{path}: no .nii or .nii.gz files below this folder")
            for file in files:
                folder = file.parent if out_dir is None else out_dir / file.parent.relative_to(path)
                pairs.append((file, renamed(file, folder, suffix)))
        else:
            pairs.append((path, renamed(path, out_dir if out_dir is not None else path.parent, suffix)))
    _check_outputs(pairs)
    return pairs


def _single_pair(paths: Sequence[Path]) -> Pair:
    if len(paths) != 2:
        raise N2DInputError(
            f"{len(paths)} path(s) given: give IN OUT, or inputs with --out-dir DIR and/or --out-suffix TEXT"
        )
    source, output = paths
    if source.is_dir():
        raise N2DInputError(f"{source}: a folder; denoise a folder's files with --out-dir or --out-suffix")
    if same_file(source, output):
        raise N2DInputError(
            f"{output}: this is the input itself; n2d never overwrites its input, give another OUT"
        )
    return source, output


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once resolved (symbolic links followed),
    or the same inode (hard links, bind mounts)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist
        return False


def check_writable(folder: Path) -> None:
    """Refuse, before any work, a ``folder`` to write into that cannot be written or made: an existing
    file in its place, a read-only or forbidden folder, or a missing parent (n2d makes at most the
    last folder of a path, so that a typo does not grow a tree)."""
    target = folder if folder.exists() else folder.parent
    if not target.exists():
        raise N2DInputError(f"{target}: no such folder (n2d creates only the last folder of an output path)")
    if not target.is_dir():
        raise N2DInputError(f"{target}: a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise N2DInputError(f"{target}: cannot write here (read-only or not permitted)")


def _check_outputs(pairs: list[Pair]) -> None:
    """No output is an input, and no two inputs write the same output."""
    inputs = {source.resolve() for source, _ in pairs}
    written: dict[Path, Path] = {}
    for source, output in pairs:
        target = output.resolve()
        if target in inputs:
            raise N2DInputError(
                f"{source}: its output would overwrite an input; give --out-suffix or another --out-dir"
            )
        if target in written:
            raise N2DInputError(
                f"{written[target]} and {source} would both write {output}; give --out-suffix"
            )
        written[target] = source
