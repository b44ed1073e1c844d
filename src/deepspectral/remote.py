"""Outputs at an fsspec URL (``-o s3://bucket/run/``, ``gs://...``, ``file:///...``):
written in a local staging folder, then uploaded file by file, each whole or not at all.

Every writer of the package writes local files (:mod:`deepspectral.files`); a run whose
output folder is a URL writes them in a local *staging folder* (:func:`run_folder`: one per
URL, under the user's cache folder) and :class:`RemoteFolder` copies them to the URL:

- **Whole or not at all.** On an object store (:data:`OBJECT_STORES`: S3, GCS, Azure,
  ``memory://``) one ``put`` is atomic: the object appears only once its upload completed
  (a multipart upload too), so each file is put at its final name. Elsewhere (a local or
  shared file system through ``file://``, SFTP, HDFS, ...) a file is put under a temporary
  name ``.<name>.<token>.tmp`` in the same folder and then moved to its name (a rename);
  such a file left by a killed run is removed by the next run that lists the folder
  (a rerun that resumes: :meth:`RemoteFolder.modified_times`).
- **Per image.** :class:`UploadingWork` wraps a command's per-image ``work``: the files it
  wrote (:func:`deepspectral.files.recording_writes`) are uploaded in the order written,
  then their staged copies deleted. When an upload fails, the files of that image already
  uploaded are removed from the URL and an ``OSError`` naming the URL is raised: the image
  fails alone (``errors.json``), like any per-image error. It runs wherever ``work`` runs:
  on a Ray cluster, in the worker that processed the image.
- **Credentials** come from fsspec's usual sources on every machine that writes: the
  environment (``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``,
  ``AZURE_STORAGE_CONNECTION_STRING``...), the tools' own configuration files
  (``~/.aws/credentials``, ``gcloud auth application-default login``) or an instance role,
  and fsspec's configuration (``~/.config/fsspec/*.json``, ``FSSPEC_<PROTOCOL>_<OPTION>``
  variables). Nothing is passed from the driver to the workers but the URL.

The protocol's package must be installed (``s3fs``, ``gcsfs``, ``adlfs``) besides fsspec
(``pip install "deepspectral[cloud]"``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["RemoteFolder", "UploadingWork", "run_folder", "OBJECT_STORES", "STAGING_DIR"]

#: Protocols whose ``put`` of one object is atomic (the object appears when its upload
#: completed: S3 PutObject / CompleteMultipartUpload, GCS and Azure uploads, fsspec's
#: in-memory store): a file is put at its final name there, elsewhere under a temporary
#: name then moved.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
#: Folder of the staging folders, in the user's cache folder (``$XDG_CACHE_HOME`` or
#: ``~/.cache``): ``<it>/<digest of the URL>/out`` (and ``cache``, the default feature cache).
STAGING_DIR = "deepspectral/url-outputs"
#: Keys of fsspec's file details that hold a modification time, by back-end (local, S3,
#: Azure, GCS, memory), first found first used.
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")
#: Random bytes in the name of an upload's temporary file, and the pattern of those names.
_TOKEN_BYTES = 4
_TEMPORARY = re.compile(rf"\..+\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")


def run_folder(url: str) -> Path:
    """The local folder of the runs writing to ``url``: ``<cache>/deepspectral/url-outputs/
    <first 16 hex digits of the SHA-256 of the URL>`` (the same on every machine that has the
    same ``$XDG_CACHE_HOME`` or home folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(url.rstrip("/").encode("utf-8")).hexdigest()[:16]
    return Path(base, STAGING_DIR, digest)


class RemoteFolder:
    """An output folder at an fsspec URL, written through a local staging folder.

    Parameters
    ----------
    url : str
        The folder's URL (``scheme://...``; a trailing ``/`` is ignored).
    staging : path, optional
        Local folder whose files are uploaded to the same relative path under ``url``
        (default: ``run_folder(url) / "out"``).

    Notes
    -----
    Picklable (for Ray tasks): the fsspec file system is opened again where it is used.
    """

    def __init__(self, url: str, staging=None) -> None:
        from .data.images import is_url

        if not is_url(url):
            raise ValueError(f"url: expected an fsspec URL (scheme://...), got {url!r}")
        self.url = url.rstrip("/")
        self.staging = Path(staging) if staging is not None else run_folder(url) / "out"
        self.protocol = self.url.split("://", 1)[0].lower()
        self._fs = None
        self._root: str | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None, "_root": None}

    def __repr__(self) -> str:
        return f"RemoteFolder({self.url!r}, staging={str(self.staging)!r})"

    # ------------------------------------------------------------------ the store
    def _open(self):
        if self._fs is None:
            from .data.images import url_filesystem

            self._fs, root = url_filesystem(self.url, what="-o")
            self._root = root.rstrip("/")
        return self._fs

    @property
    def atomic_put(self) -> bool:
        """Whether one ``put`` is atomic here (:data:`OBJECT_STORES`)."""
        return self.protocol in OBJECT_STORES

    def _path(self, relative: str) -> str:
        self._open()
        return f"{self._root}/{relative}" if self._root else relative

    def url_of(self, relative: str) -> str:
        """The URL of the file at ``relative`` (a POSIX path) in the folder."""
        return f"{self.url}/{relative}"

    def relative(self, path) -> str:
        """``path`` (a staged file) relative to the staging folder, as a POSIX path;
        ``ValueError`` when it is outside."""
        return Path(path).relative_to(self.staging).as_posix()

    def check_writable(self) -> None:
        """Open the file system (``ValueError`` naming what to install when fsspec or the
        protocol's package is missing) and write then delete a probe file in the folder
        (``OSError`` naming the URL when that fails: no such bucket, no permission, no
        credentials)."""
        fs = self._open()
        probe = f".write-check.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            if not self.atomic_put:
                fs.makedirs(self._root, exist_ok=True)
            fs.pipe_file(self._path(probe), b"")
            fs.rm_file(self._path(probe))
        except Exception as error:  # each back-end raises its own (botocore, google.auth, ...)
            raise OSError(f"cannot write in {self.url}: {_describe(error)}") from None

    # ------------------------------------------------------------------ reading
    def modified_times(self, *, remove_temporary: bool = False) -> dict[str, float | None]:
        """Every file under the folder (one listing): relative POSIX path -> modification
        time in seconds since the epoch as the store records it (None when it records
        none). Empty when the folder does not exist yet. With ``remove_temporary`` (only
        while no upload runs), the temporary files of uploads a killed run left
        (``.<name>.<token>.tmp``, see the module's notes) are deleted and left out."""
        fs = self._open()
        try:
            found = fs.find(self._root, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as error:
            raise OSError(f"cannot list {self.url}: {_describe(error)}") from None
        prefix = f"{self._root}/" if self._root else ""
        times = {
            name[len(prefix) :]: _modified(info)
            for name, info in found.items()
            if name.startswith(prefix) and info.get("type", "file") == "file"
        }
        if remove_temporary and not self.atomic_put:
            stale = [name for name in times if _TEMPORARY.fullmatch(posixpath.basename(name))]
            self.remove(stale)
            for name in stale:
                del times[name]
        return times

    def read_bytes(self, relative: str) -> bytes | None:
        """The bytes of ``relative``, or None when it does not exist (or cannot be read)."""
        found = self.read_many([relative])
        return found.get(relative)

    def read_many(self, relatives: Iterable[str]) -> dict[str, bytes]:
        """The bytes of each of ``relatives`` that can be read (one call: concurrent on the
        stores that support it)."""
        relatives = list(relatives)
        if not relatives:
            return {}
        fs = self._open()
        paths = {self._path(relative): relative for relative in relatives}
        try:
            found = fs.cat(list(paths), on_error="omit")
        except Exception:
            return {}
        if not isinstance(found, dict):  # a single path gives its bytes
            found = {next(iter(paths)): found}
        return {paths[path]: data for path, data in found.items() if path in paths and isinstance(data, bytes)}

    # ------------------------------------------------------------------ writing
    def upload(self, paths: Iterable) -> list[str]:
        """Copy the staged files ``paths`` (in this order) to the URL, each whole or not at
        all (see the module's notes); files outside the staging folder are left out.

        Returns
        -------
        list of str
            The relative paths uploaded.

        Raises
        ------
        OSError
            Naming the file's URL when one upload failed; the files of this call already
            uploaded are removed from the URL first (as far as the store lets us).
        """
        done: list[str] = []
        for path in dict.fromkeys(Path(p) for p in paths):
            try:
                relative = self.relative(path)
            except ValueError:
                continue
            try:
                self._put(path, relative)
            except Exception as error:
                self.remove(done)
                raise OSError(f"cannot upload {self.url_of(relative)}: {_describe(error)}") from None
            done.append(relative)
        return done

    def _put(self, path: Path, relative: str) -> None:
        """One file to the URL, whole or not at all (the one place that uploads: tests
        inject faults here)."""
        fs = self._open()
        target = self._path(relative)
        if self.atomic_put:
            fs.put_file(str(path), target)
            return
        folder, name = posixpath.split(target)
        fs.makedirs(folder, exist_ok=True)
        temporary = f"{folder}/.{name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp"
        try:
            fs.put_file(str(path), temporary)
            fs.mv(temporary, target)
        except BaseException:
            _quietly(fs.rm_file, temporary)
            raise

    def remove(self, relatives: Iterable[str]) -> None:
        """Delete ``relatives`` from the URL where they exist, ignoring failures."""
        fs = self._open()
        for relative in relatives:
            _quietly(fs.rm_file, self._path(relative))


class UploadingWork:
    """A command's per-image ``work`` followed by the upload of the files it wrote under
    the staging folder (:meth:`RemoteFolder.upload`), whose staged copies are then
    deleted; picklable when ``work`` is, so it runs in Ray tasks as ``work`` does.

    An upload that fails raises ``OSError``: a per-image error, so the engine removes the
    image's staged files and records it in ``errors.json``; nothing of it is left at the URL.
    """

    def __init__(self, work: Callable, folder: RemoteFolder) -> None:
        self.work = work
        self.folder = folder

    def __call__(self, result):
        from .files import recording_writes, remove_files

        with recording_writes() as written:
            record = self.work(result)
        self.folder.upload(written)
        remove_files(written)
        return record


def _modified(info: dict) -> float | None:
    for key in _TIME_KEYS:
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _describe(error: BaseException) -> str:
    message = str(error).strip() or "(no message)"
    return f"{type(error).__name__}: {message}"


def _quietly(function, *args) -> None:
    try:
        function(*args)
    except Exception:
        pass
