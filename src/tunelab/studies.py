"""Where tune's Optuna studies live, and which output folder they belong to.

A study lives in the journal file ``OUT/tune.journal`` (several processes of one machine) or in
the RDB named by ``tune.storage`` / ``$TUNELAB_STORAGE`` (``postgresql://...``: workers on
several machines). An RDB storage keeps a heartbeat per running trial, so a trial whose worker
died on any machine is failed after ``GRACE_S`` and run again by a live worker (counted once).

Every tune decision (successive halving's rungs, the race, the summary and the report) is made
from the trials' run records under ``--out``: the workers of one study must share that folder
(one machine, or one folder on NFS). Each output folder carries an id (``OUT/.tunelab-folder``);
a study in a shared storage is bound to the first folder that tunes it (a marker study per
method, created atomically by the storage), and a worker with another folder is refused at
start in one line that says what to share.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from tunelab.config import RunConfig, redact
from tunelab.errors import ConfigError

JOURNAL = "tune.journal"
STORAGE_ENV = "TUNELAB_STORAGE"  # an RDB URL for tune.storage kept out of config files
FOLDER_ID = ".tunelab-folder"
MARK = "tunelab.folder"  # marker studies: tunelab.folder.<method>.<folder id>
HEARTBEAT_S, GRACE_S = 20, 60


def storage_name(base: RunConfig) -> str:
    """tune.storage, else $TUNELAB_STORAGE (a URL with a password need not be in any file),
    else the output folder (its journal file)."""
    return base.tune.storage or os.environ.get(STORAGE_ENV, "") or base.out_dir


def shared(base: RunConfig) -> bool:
    """Whether the studies live outside the output folder (an RDB URL)."""
    return storage_name(base) != base.out_dir


def storage_for(base: RunConfig):
    """The study storage: an RDB (with trial heartbeats) or the journal file in the output
    folder."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune prints its own lines
    if shared(base):
        url = storage_name(base)
        try:
            # heartbeats for the Optuna pruners' trials (run by study.optimize); halving's
            # trials are taken over through their run folders instead
            beat = HEARTBEAT_S if base.tune.pruner != "halving" else None
            return _retry(lambda: RDBStorage(url, heartbeat_interval=beat,
                                             grace_period=beat and GRACE_S))  # fmt: skip
        except ModuleNotFoundError as e:  # the URL's database driver
            raise ConfigError(
                f"tune.storage {redact(url)} needs the Python driver {e.name!r}: "
                f"pip install {'psycopg2-binary' if 'psycopg' in str(e.name) else e.name}"
            ) from None
        except Exception as e:  # sqlalchemy's OperationalError, ArgumentError...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"cannot open tune.storage {redact(url)}: {redact(first)} (check the URL, that "
                f"the server is up and the database exists)"
            ) from None
    path = Path(base.out_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    # a lock left by a killed process is released after 10 s (optuna issue #5921)
    lock = JournalFileSymlinkLock(str(path), grace_period=10)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def _retry(make, tries: int = 6):
    """``make()`` again when the database says another worker was creating the same thing at
    that moment: two workers starting on an empty database both create Optuna's tables, and
    PostgreSQL refuses one of them ("duplicate key value violates unique constraint")."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(tries):
        try:
            return make()
        except (IntegrityError, ProgrammingError):
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def folder_id(out_dir: str) -> str:
    """The output folder's id, made once (atomically: two workers starting together on one
    folder read the same id)."""
    path = Path(out_dir) / FOLDER_ID
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f"{FOLDER_ID}.{os.getpid()}.tmp")
        tmp.write_text(uuid.uuid4().hex + "\n")
        try:
            os.link(tmp, path)  # fails if another worker made it first: theirs stands
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def bind(base: RunConfig, storage, methods: list[str]) -> None:
    """Bind each method's study in a shared storage to this output folder, or refuse: the
    first folder to create its marker study wins (the storage gives study ids in creation
    order, so two workers racing agree on who was first)."""
    import optuna

    if not shared(base):
        return
    me = folder_id(base.out_dir)
    where = f"{socket.gethostname()}:{Path(base.out_dir).resolve()}"
    for method in methods:
        prefix = f"{MARK}.{method}."
        try:
            mark = optuna.create_study(storage=storage, study_name=prefix + me)
            mark.set_user_attr("folder", where)
        except optuna.exceptions.DuplicatedStudyError:
            pass  # this folder's own mark (a resumed tune, a second worker on the folder)
        marks = sorted(
            (s for s in storage.get_all_studies() if s.study_name.startswith(prefix)),
            key=lambda s: s._study_id,
        )
        first = marks[0]
        if first.study_name != prefix + me:
            if any(m.study_name == prefix + me for m in marks[1:]):  # ours came second
                storage.delete_study(
                    next(m for m in marks if m.study_name == prefix + me)._study_id
                )
            raise ConfigError(
                f"the study {method!r} in {redact(storage_name(base))} is tuned into another "
                f"output folder ({_folder_of(storage, first)}); tune decides from the trials' "
                f"run records, so every worker needs that same --out: share the folder (NFS), "
                f"or give this worker its own tune.storage (--overwrite starts the study over "
                f"here)"
            )


def _folder_of(storage, frozen) -> str:
    """Where a marker study's folder is (host:path), waiting briefly for its creator to say."""
    for _ in range(50):
        where = storage.get_study_user_attrs(frozen._study_id).get("folder")
        if where:
            return where
        time.sleep(0.1)
    return "a folder that has not said where it is"


def unbind(base: RunConfig, storage, method: str) -> None:
    """Forget which folder a method's study belongs to (--overwrite)."""
    if not shared(base):
        return
    for s in storage.get_all_studies():
        if s.study_name.startswith(f"{MARK}.{method}."):
            storage.delete_study(s._study_id)
