"""Run the stage notebooks of a run file with papermill, into ``outputs/<run>/``, deciding like a build system.

When a stage finishes, ``manifest.json`` records what it consumed (a digest of its parameters, of its
notebook and of the *content* of every input: an upstream stage's output, a local data file or model
folder) and what it produced. A stage runs again exactly when one of those differs from what it last
consumed — across invocations, whatever ``--stages`` said last time — so a retrained model is never
reported with the old model's responses. `stage_status` says, per stage, why it would run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from porover.config import project_root, referenced_stage
from porover.digests import digest_of, path_digest
from porover.judges import WEIGHT_FILES, judges_named
from porover.models import is_adapter_folder, model_digest
from porover.progress import PLAIN_ENV
from porover.run_file import RunParams, load_run_params
from porover.run_lock import RunLock
from porover.spending import SPENDING_FIELDS, ledger_spent

NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "papermill", "openai",
            "porover-workbench")
log = logging.getLogger("porover")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The project's git commit, with ``-dirty`` when the working tree has changes."""
    try:
        root = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def export_html(notebook: Path) -> Path:
    """Write an HTML copy of an executed notebook beside it; outputs sanitised (untrusted text stays text)."""
    from porover.report.pages import notebook_html

    body = notebook_html(notebook, notebook.stem, code=True, standalone=True)
    html = notebook.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


class PeakMemory:
    """Peak resident memory of this process's children (the stage's kernel and what it starts), sampled."""

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.peak_bytes, self.interval = 0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # a child that exited between listing and reading
                    pass
            self.peak_bytes = max(self.peak_bytes, total)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def notebook_digest(path: Path) -> str:
    """A digest of a notebook's code cells: what it runs (saving it in JupyterLab, or editing its prose, is no change)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return digest_of(["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"])


def runs_folder(outputs: str | Path) -> Path:
    """The parent of run folders; a relative one is under the project root, where the kernels resolve it too."""
    outputs = Path(outputs).expanduser()
    return outputs if outputs.is_absolute() else project_root() / outputs


def _write_manifest(path: Path, manifest: dict) -> None:
    """Write the manifest whole or not at all: a reader (``status``, ``report``, the browser) never sees half."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name + ".", suffix=".partial",
                                     delete=False, encoding="utf-8") as partial:
        partial.write(json.dumps(manifest, indent=2))
        partial.flush()
        os.fsync(partial.fileno())
    os.replace(partial.name, path)


def read_manifest(run_dir: str | Path) -> dict:
    """A run folder's manifest (an empty one for a run that never ran)."""
    path = Path(run_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def estimated_usd(run: RunParams) -> dict[str, float]:
    """Per stage that calls a priced endpoint, its worst-case cost in USD (`porover.costs`); empty without prices."""
    if not any(stage.params.get("prices") for stage in run.stages.values()):
        return {}
    from porover.costs import estimate_costs

    return {cost.stage: round(cost.usd, 4) for cost in estimate_costs(run) if cost.api_calls and cost.usd is not None}


def params_digest(params: dict) -> str:
    """A digest of what a stage's parameters make it write: a cost cap or a price changes nothing written."""
    return digest_of({key: value for key, value in params.items() if key not in SPENDING_FIELDS})


def input_digests(run: RunParams, stage: str, run_dir: Path) -> dict[str, str | None]:
    """The content digest of every input of ``stage`` as it is on disk now (None: missing)."""
    digests = {}
    for label, value in run.stages[stage].inputs.items():
        target = referenced_stage(value)
        path = run.output(run_dir, target) if target else Path(value).expanduser()
        # an adapter folder stands for its base model too
        digests[label] = model_digest(str(path)) if is_adapter_folder(path) else path_digest(path)
    for judge in judges_named(run.stages[stage].params):  # a judge is known by its weights, not its name
        digests[f"judge {judge}"] = path_digest(WEIGHT_FILES[judge])
    return digests


def output_digest(run: RunParams, stage: str, run_dir: Path) -> str | None:
    """A digest of everything the stage's type declares as its outputs (None: some are missing)."""
    parts = [path_digest(run_dir / stage / name) for name in run.stages[stage].type.outputs]
    return None if None in parts else digest_of(parts)


def stale_reasons(run: RunParams, stage: str, run_dir: Path, record: dict) -> list[str]:
    """Why ``stage`` must run (empty: its last finished run consumed exactly what it would consume now)."""
    if not record:
        return ["never run"]
    if record.get("status") != "finished":
        return [f"last run {record.get('status', 'unknown')}"]
    reasons = []
    if record.get("params_digest") != params_digest(run.stages[stage].params):
        reasons.append("parameters changed")
    if record.get("notebook_digest") != notebook_digest(NOTEBOOK_DIR / run.stages[stage].type.notebook):
        reasons.append("notebook changed")
    then, now = record.get("inputs", {}), input_digests(run, stage, run_dir)
    reasons += [f"input {label} changed" for label in now if then.get(label) != now[label]]
    if record.get("outputs") != output_digest(run, stage, run_dir):
        reasons.append("its outputs changed or went missing on disk")
    return reasons


def stage_status(params_path: str, run_name: str | None = None, outputs: str = "outputs") -> dict[str, str]:
    """Per stage of a run file: ``finished``, ``stale: <why>`` or ``never run`` (for ``porover status``).

    Stages downstream of a stale stage are stale too: they would run after it.
    """
    run = load_run_params(params_path)
    run_dir = runs_folder(outputs) / (run_name or run.run_name)
    records, status, rerun = read_manifest(run_dir)["stages"], {}, set()
    for stage in run.stages:
        reasons = stale_reasons(run, stage, run_dir, records.get(stage, {}))
        upstream = [s for s in run.stages[stage].upstream() if s in rerun]
        if upstream and records.get(stage):
            reasons.append(f"input stage {', '.join(upstream)} will run again")
        if reasons:
            rerun.add(stage)
        status[stage] = "finished" if not reasons else ("never run" if reasons == ["never run"] else
                                                        "stale: " + "; ".join(reasons))
    return status


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook or a test may have replaced it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _StageLog:
    """Send papermill's cell-by-cell chatter to ``logs/<stage>.log`` instead of the terminal."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        self.logger = logging.getLogger("papermill")

    def __enter__(self) -> "_StageLog":
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


def _execute(stage: str, notebook: Path, executed: Path, parameters: dict, log_file: Path) -> str | None:
    """Execute one notebook; None when it finished, else the failing cell's error."""
    import papermill

    with _StageLog(log_file):
        try:
            papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(Path.cwd()),
                                       log_output=True, progress_bar=False,
                                       # the kernel's harmless "TCP without encryption" warning stays out of sight
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
            return None
        except Exception as error:  # papermill raises its own error types and kernel errors alike
            return f"{type(error).__name__}: {str(error).strip()[-3000:]}"


def run_pipeline(params_path: str, stages: list[str] | None = None, run_name: str | None = None,
                 force: bool = False, outputs: str = "outputs") -> dict:
    """Execute stage notebooks with papermill; skip every stage whose inputs are what it last consumed.

    Args:
        params_path: A run file such as ``params/demo.yaml``.
        stages: Only these stage names (run in file order; default: all).
        run_name: Folder under ``outputs`` (default: the file's ``run_name``).
        force: Run the selected stages even when nothing they read changed.
        outputs: Parent folder of run folders.

    Returns:
        The manifest, also written to ``outputs/<run>/manifest.json``.

    Raises:
        ValueError: Invalid parameters, unknown stage names, or a stage whose input stage never ran,
            before anything runs.
        porover.run_lock.RunLocked: Another writer holds the run folder (the message names it), before
            anything runs.
    """
    run = load_run_params(params_path)
    unknown = [s for s in stages or [] if s not in run.stages]
    if unknown:
        raise ValueError(f"{params_path}: unknown stage(s) {unknown}; stages in this file: {list(run.stages)}")
    selected = [s for s in run.stages if not stages or s in stages]
    run_dir = runs_folder(outputs) / (run_name or run.run_name)
    missing = [f"stage {stage!r} needs {target!r}'s output {run.output(run_dir, target)}, which does not exist; "
               f"run {target!r} too" for stage in selected for target in run.stages[stage].upstream()
               if target not in selected and not run.output(run_dir, target).exists()]
    if missing:
        raise ValueError(f"{params_path}: " + "; ".join(missing))
    with RunLock(run_dir, f"porover run {params_path}"):  # one writer; the kernels it starts share the lock
        return _run_stages(run, params_path, selected, run_dir, force)


def _run_stages(run: RunParams, params_path: str, selected: list[str], run_dir: Path, force: bool) -> dict:
    """`run_pipeline`'s work, under the run folder's lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "manifest.json"
    manifest = read_manifest(run_dir)
    # Several run files may share one run folder (params/demo_sweep.yaml reads outputs/demo): the parameters and
    # types of every stage the folder holds are kept, this file's replacing what another said of the same stage.
    manifest.update({"run_dir": str(run_dir), "params_file": str(params_path),
                     "params": {**manifest.get("params", {}), **{s: st.params for s, st in run.stages.items()}},
                     "types": {**manifest.get("types", {}), **{s: st.type.name for s, st in run.stages.items()}},
                     "sweep": [dataclasses.asdict(v) for v in run.variants],
                     "packages": package_versions(), "git_commit": git_commit(), "python": platform.python_version(),
                     "platform": platform.platform(),
                     # CPU results repeat bit for bit only at the same thread count (docs/running.md)
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()})
    shutil.copyfile(params_path, run_dir / "params.yaml")
    estimates = estimated_usd(run)
    os.environ[PLAIN_ENV] = "1"  # inherited by the kernels papermill starts
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    for stage in selected:
        spec = run.stages[stage]
        reasons = stale_reasons(run, stage, run_dir, manifest["stages"].get(stage, {}))
        if not reasons and not force:
            log.info("[%s] up to date; skipped", stage)
            continue
        params = {**run.resolve(stage, run_dir), "run_dir": str(run_dir)}
        executed, log_file = run_dir / f"{stage}.ipynb", run_dir / "logs" / f"{stage}.log"
        (run_dir / "params").mkdir(exist_ok=True)
        (run_dir / "params" / f"{stage}.yaml").write_text(yaml.safe_dump(params))
        record = {"type": spec.type.name, "notebook": str(executed), "log": str(log_file), "status": "running",
                  "params_digest": params_digest(spec.params),
                  "notebook_digest": notebook_digest(NOTEBOOK_DIR / spec.type.notebook),
                  "inputs": input_digests(run, stage, run_dir), "started": datetime.now(timezone.utc).isoformat()}
        if stage in estimates:
            record["estimated_usd"] = estimates[stage]
        manifest["stages"][stage] = record
        _write_manifest(manifest_path, manifest)
        log.info("[%s] running (%s)", stage, "forced" if force and not reasons else "; ".join(reasons))
        start = time.perf_counter()
        with PeakMemory() as memory:
            error = _execute(stage, NOTEBOOK_DIR / spec.type.notebook, executed, params, log_file)
        record.update(status="failed" if error else "finished", wall_seconds=round(time.perf_counter() - start, 1),
                      peak_rss_mib=round(memory.peak_bytes / 2**20, 1), finished=datetime.now(timezone.utc).isoformat())
        if (spent := ledger_spent(run_dir / stage)) is not None:
            record["spent_usd"] = round(spent, 6)
        if error:
            record["error"] = error
        else:
            record["outputs"] = output_digest(run, stage, run_dir)
        if executed.exists():
            record["html"] = str(export_html(executed))
        _write_manifest(manifest_path, manifest)
        if error:
            log.error("[%s] FAILED after %.0f s (peak %.1f GiB); the failing cell is in %s\n%s", stage,
                      record["wall_seconds"], record["peak_rss_mib"] / 1024, executed, error[-1500:])
            break
        log.info("[%s] finished in %.0f s, peak memory %.1f GiB", stage, record["wall_seconds"],
                 record["peak_rss_mib"] / 1024)
    return manifest
