"""A sweep's `storage:` on an object store or any filesystem named by a URI (docs/design.md
§4): `s3://bucket/runs`, `gs://...`, `hdfs://...`, `file:///...`, whatever pyarrow's
`FileSystem.from_uri` resolves, which is what Ray Tune and Ray Train accept as their
`storage_path` (so their own files go there directly).

Trial folders are written with plain file I/O (training/checkpoint.py), so with a URI a
trial trains in a fresh local scratch folder and the URI holds the copy that counts:

    pull URI/checkpoints/<trial_id>/  -> scratch     (before training: resume from it)
    push scratch -> URI/.../<trial_id>/             (after every checkpoint, and at the end)
    delete scratch                                  (the URI copy is the trial's folder)

so a trial that Ray retries on another node, or a data-parallel worker anywhere, resumes
from the last checkpoint pushed. A push writes each file under a temporary name and moves
it into place on a filesystem (a reader never sees half a checkpoint); on an object store
(S3, GCS) an object appears whole when its upload ends, so it is written in place.

Only this module and its callers in search/ import pyarrow (a Ray dependency); the training
path (model, data, training) never does.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Remote", "is_uri", "join", "mirrored", "parent"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WHOLE_OBJECTS = ("s3", "gcs")  # filesystems whose uploads appear atomically
_PARTIAL = ".partial"  # a file being pushed, before it is moved into place


def is_uri(location: str | Path) -> bool:
    """Whether a storage location is a URI (`scheme://...`) rather than a local path."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


def join(location: str | Path, *names: str) -> str | Path:
    """`location / name / ...` for a local Path or a URI (a URI's `?query` stays last)."""
    if not is_uri(location):
        return Path(location).joinpath(*names)
    base, sep, query = str(location).partition("?")
    return "/".join([base.rstrip("/"), *names]) + sep + query


def parent(location: str | Path) -> str | Path:
    """The folder holding `location`, a local Path or a URI."""
    if not is_uri(location):
        return Path(location).parent
    base, sep, query = str(location).partition("?")
    return base.rstrip("/").rsplit("/", 1)[0] + sep + query


@dataclass(frozen=True)
class Remote:
    """A folder named by a URI. Every method resolves the filesystem afresh (pyarrow
    filesystems do not pickle everywhere, and a Remote travels to Ray workers)."""

    uri: str

    def _fs(self):
        from pyarrow import fs

        return fs.FileSystem.from_uri(self.uri)

    def child(self, name: str) -> Remote:
        return Remote(str(join(self.uri, name)))

    def kind(self) -> str:
        """'dir', 'file' or 'none': what the URI names now (resolving the filesystem, which
        raises for an unknown scheme or unreachable store)."""
        from pyarrow import fs

        filesystem, path = self._fs()
        t = filesystem.get_file_info(path).type
        return {fs.FileType.Directory: "dir", fs.FileType.File: "file"}.get(t, "none")

    def files(self) -> list[str]:
        """Paths of every file below the folder, relative to it ([] when it does not exist)."""
        return sorted(self.sizes())

    def sizes(self) -> dict[str, int]:
        """{path relative to the folder: bytes} of every whole file below it ({} when none;
        a push cut off mid-file leaves a `.partial` file, which is not one)."""
        from pyarrow import fs

        filesystem, path = self._fs()
        infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True,
                                                         allow_not_found=True))
        root = path.rstrip("/") + "/"
        return {i.path[len(root):]: i.size for i in infos
                if i.type == fs.FileType.File and not i.path.endswith(_PARTIAL)}

    def folders(self) -> list[str]:
        """Names of the folder's direct subfolders ([] when it does not exist)."""
        from pyarrow import fs

        filesystem, path = self._fs()
        infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory)

    def pull(self, local: Path) -> int:
        """Copy every file below the folder into `local` (made if missing); returns how
        many. Nothing there is not an error: a trial's first attempt has nothing to pull."""
        filesystem, path = self._fs()
        names = self.files()
        for name in names:
            target = Path(local) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with filesystem.open_input_stream(f"{path.rstrip('/')}/{name}") as src, \
                    open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 2**24)
        return len(names)

    def push(self, local: Path) -> int:
        """Copy every file below `local` into the folder, each one whole (see the module
        docstring); returns how many. Files only the folder has are left alone."""
        filesystem, path = self._fs()
        whole = filesystem.type_name in _WHOLE_OBJECTS
        names = sorted(p for p in Path(local).rglob("*") if p.is_file())
        for file in names:
            target = f"{path.rstrip('/')}/{file.relative_to(local).as_posix()}"
            filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
            staged = target if whole else target + _PARTIAL
            with open(file, "rb") as src, filesystem.open_output_stream(staged) as dst:
                shutil.copyfileobj(src, dst, 2**24)
            if not whole:
                _replace(filesystem, staged, target)
        return len(names)

    def delete(self) -> None:
        """Delete the folder and everything below it (nothing when it does not exist)."""
        filesystem, path = self._fs()
        if self.kind() == "dir":
            filesystem.delete_dir(path)


def _replace(filesystem, staged: str, target: str) -> None:
    """Move `staged` onto `target`. Where a move cannot overwrite (HDFS refuses an existing
    target), delete the old file first: a crash between the two leaves only the
    `.partial`, which a pull skips, so the trial starts over rather than from half a file."""
    try:
        filesystem.move(staged, target)
    except OSError:
        filesystem.delete_file(target)
        filesystem.move(staged, target)


def mirrored(fit, *, writer: bool = True):
    """Wrap a trainer with `train`'s signature so that an `out_dir` naming a URI works: the
    trial trains in a fresh local scratch folder, pulled from the URI first and (when
    `writer`: rank 0 of a data-parallel trial, or its only process) pushed back after every
    evaluation's checkpoint and at the end, then the scratch folder is deleted. A local
    out_dir calls `fit` unchanged."""

    def run(config, *, out_dir, callback=None, **kwargs):
        if not is_uri(out_dir):
            return fit(config, out_dir=out_dir, callback=callback, **kwargs)
        remote = Remote(str(out_dir))
        scratch = Path(tempfile.mkdtemp(prefix="spiralsearch-trial-"))
        try:
            remote.pull(scratch)

            def on_eval(row: dict) -> None:  # the loop checkpoints just before this call
                if writer:
                    remote.push(scratch)
                if callback is not None:
                    callback(row)

            result = fit(config, out_dir=scratch, callback=on_eval, **kwargs)
            if writer:
                remote.push(scratch)  # summary.json and the final checkpoint
            return result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return run
