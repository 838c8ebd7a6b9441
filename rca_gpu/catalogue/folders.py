"""The folders the catalogue commands read and write, checked before any work starts.

- A RUN_DIR argument must be a run folder made by ``rca-gpu run`` (it holds run.json). The output folders of
  ``assign``, ``select`` and ``export`` look like results too, so a RUN_DIR that is one of them is named as
  such, with the run folder it came from when that is recorded.
- An ``--out`` (or ``--to``) folder must be a folder that can be written (:func:`rca_gpu.runfolder.check_out_folder`)
  and must not be a run folder (the assignments would mix with that run's files) nor the output folder of
  another of those commands (assign into select's folder would write over its assignments.parquet).
"""

from __future__ import annotations

from pathlib import Path

from rca_gpu.catalogue.reference import CatalogueError
from rca_gpu.runfolder import RUN_FILE


def check_run_dir(path: str | Path, *, argument: str = "RUN_DIR") -> None:
    """Refuse a ``path`` that is the output folder of assign, select or export instead of a run folder
    (:func:`rca_gpu.runfolder.not_a_run_note`).

    Other problems (missing folder, unfinished run, other version) are left to
    :func:`rca_gpu.runfolder.open_run`, which names them.

    Raises
    ------
    CatalogueError
        ``path`` holds no run.json but one of rca_gpu.runfolder.OUTPUT_MARKERS: one line naming the folder,
        what it is, what is expected, and the run folder recorded in it when there is one.
    """
    from rca_gpu.runfolder import not_a_run_note

    note = not_a_run_note(path, argument)
    if note:
        raise CatalogueError(note)


def check_out_dir(out: str | Path, *, option: str = "--out", run_path: str | Path | None = None,
                  example: str = "assigned/", command: str = "rca-gpu assign") -> Path:
    """Check an output folder before any image is read: writable (not a file, not below a file), not a
    run folder (the run read, ``run_path``, or any folder holding run.json), and not the output folder of
    another command than ``command`` (one of :data:`rca_gpu.runfolder.OUTPUT_MARKERS`: assign, select,
    export); the same command's earlier outputs may be written over. Nothing is created.

    Raises
    ------
    rca_gpu.runfolder.RunFolderError
        ``out`` is empty, an existing file, below a file, not writable, or another command's output folder.
    CatalogueError
        ``out`` is a run folder.
    """
    from rca_gpu.errors import printable
    from rca_gpu.runfolder import RUN_COMMAND, check_out_folder, mixed_folder_message

    folder = check_out_folder(out, option=option, command=command, example=example)
    same = run_path is not None and folder.exists() and folder.resolve() == Path(run_path).resolve()
    if same or (folder / RUN_FILE).is_file():
        # a run folder that also holds this command's earlier outputs: say which run files to move away
        mixed = None if same else mixed_folder_message(folder, option=option, command=command, example=example,
                                                       others=[(RUN_COMMAND, RUN_FILE)],
                                                       shown=printable(repr(str(out))))
        if mixed:
            raise CatalogueError(mixed)
        what = "the run folder itself" if same else "a run folder (it holds run.json)"
        raise CatalogueError(
            f"The {option} folder {printable(repr(str(out)))} is {what}; its files would mix with the run's. "
            f"Pass a folder of its own, e.g. {option} {example}."
        )
    return folder
