"""Storage and tracker faults around a finished run, for real: the CLI in a subprocess against real
files, a real SQLite store, a real tmpfs (full, read-only), a real lock holder and a port nothing
listens on. Each ends in a clear message and leaves what was recorded as it was.

One finished run is made once for the module; each test works on its own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from engine_helpers import TINY_SPEC, cli, free_port, write_spec
from specreach.engine.metrics_table import read_table

pytestmark = pytest.mark.slow  # a run for the module, then a CLI process or two per test: about 2 minutes

ONE_RUN = {**TINY_SPEC, "model": {**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}},
           "train": {**TINY_SPEC["train"], "threads": 1, "keep_checkpoints": "last"}}


def no_traceback(text: str) -> None:
    assert "Traceback (most recent call last)" not in text, text[-3000:]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The output folder of a finished one-run spec (checkpoint kept), and the spec file."""
    directory = tmp_path_factory.mktemp("finished")
    spec_path = write_spec(directory, ONE_RUN)
    done = cli("run", spec_path, "--output", directory / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    return directory / "out" / "tiny", spec_path


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished output at tmp_path/out/tiny (its engine.json still names the original)."""
    root, _ = finished
    shutil.copytree(root, tmp_path / "out" / "tiny")
    return tmp_path / "out" / "tiny"


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")


# --- export and listing ----------------------------------------------------------------------------------

def test_export_never_writes_into_a_run_folder_or_over_a_record(copy, tmp_path):
    folder = copy / "runs" / "s-seed0"
    recorded = {path: path.read_bytes() for path in (folder / "metrics.csv", copy / "spec.yaml", copy / "mlflow.db")}
    done = cli("export", folder, "--format", "csv")
    assert done.returncode == 2 and f"{folder} is a run's folder, which export never writes into: give the file " \
                                    "to write with --output PATH" in done.stderr
    for output, why in ((folder / "metrics.csv", f"lies in the run folder {folder}"),
                        (copy / "spec.yaml", "is a file the spec's output folder records"),
                        (copy / "mlflow.db", "is a file the spec's output folder records"),
                        (tmp_path, "is a folder; give the file to write")):
        done = cli("export", copy, "--format", "csv", "--output", output)
        assert done.returncode == 2 and why in done.stderr, (output, done.stderr)
        no_traceback(done.stderr)
    assert all(path.read_bytes() == content for path, content in recorded.items())
    done = cli("export", folder, "--format", "csv", "--output", tmp_path / "one.csv")
    assert done.returncode == 0 and done.stdout.strip() == f"{tmp_path / 'one.csv'}: 13 metric rows of 1 run"


def test_a_cut_last_line_is_left_out_of_the_export_and_said(copy, tmp_path):
    table = copy / "runs" / "s-seed0" / "metrics.csv"
    rows = len(read_table(table))
    table.write_bytes(table.read_bytes()[:-10])  # as a run killed while writing its last row leaves it
    done = cli("export", copy, "--format", "csv", "--output", tmp_path / "all.csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tmp_path / 'all.csv'}: {rows - 1} metric rows of 1 run"
    assert f"note: s-seed0: the last line of {table} is cut short" in done.stderr
    assert len((tmp_path / "all.csv").read_text().splitlines()) == rows  # the header and the whole rows


def test_a_damaged_table_or_record_is_listed_as_damaged(copy, tmp_path):
    folder = copy / "runs" / "s-seed0"
    table = folder / "metrics.csv"
    table.write_text(table.read_text().splitlines()[0] + "\n" + "1," + "9" * 200_000 + "\n")  # an oversized field
    for command in (["runs", copy], ["export", copy, "--output", tmp_path / "x.parquet"]):
        done = cli(*command)
        no_traceback(done.stderr)
        assert f"{table}:2: not a metrics table line (field larger than field limit" in done.stdout + done.stderr
    assert done.returncode == 1 and "not exported: s-seed0:" in done.stderr
    description = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**description, "sweep": 5}))
    done = cli("runs", copy)
    assert done.returncode == 0, done.stderr
    no_traceback(done.stderr)
    assert "DAMAGED" in done.stdout and f"{folder / 'run.json'}: 'sweep' holds int '5', not a mapping" in done.stdout


# --- where a run writes ----------------------------------------------------------------------------------

def test_an_output_that_is_a_file_is_refused(finished, tmp_path):
    _, spec_path = finished
    output = tmp_path / "a-file"
    output.write_text("not a folder")
    done = cli("run", spec_path, "--output", output)
    assert done.returncode == 2 and f"output {output} is a file, not a folder: give a folder" in done.stderr
    no_traceback(done.stderr)
    assert output.read_text() == "not a folder"


def test_a_read_only_output_folder_is_told_for_run_resume_and_export(finished, tmp_path):
    root, spec_path = finished
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "16m")
    try:
        shutil.copytree(root, disk / "tiny")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for command in (["run", spec_path, "--output", disk], ["run", "--resume", disk / "tiny"],
                        ["export", disk / "tiny"]):
            done = cli(*command)
            assert done.returncode == 1, (command, done.stderr[-2000:])
            no_traceback(done.stderr)
            assert f"{disk}" in done.stderr and "Read-only file system; the file system is read-only: give a folder " \
                                                "you can write to" in done.stderr, (command, done.stderr)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_at_the_start_names_the_file(finished, tmp_path):
    _, spec_path = finished
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "64k")
    try:
        with open(disk / "filler", "wb") as handle:  # every byte taken
            try:
                handle.write(b"\0" * 65536 * 2)
            except OSError:
                pass
        done = cli("run", spec_path, "--output", disk / "out")
        assert done.returncode == 1, done.stderr[-2000:]
        no_traceback(done.stderr)
        assert f"{disk / 'out' / 'tiny'}" in done.stderr and "No space left on device; the disk is full: free space" \
            in done.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- the tracking store ----------------------------------------------------------------------------------

def test_a_damaged_mlflow_store_is_named_for_sync_and_run(copy):
    database = copy / "mlflow.db"
    database.write_bytes(database.read_bytes()[:40_000])  # truncated
    done = cli("sync", copy)
    assert done.returncode == 2 and f"{database}: cannot be opened as an MLflow store (" in done.stderr
    assert "database disk image is malformed" in done.stderr and "it is damaged or not a store: move it aside" \
        in done.stderr
    no_traceback(done.stderr)
    database.write_bytes(os.urandom(3000))  # garbage
    done = cli("sync", copy)
    assert done.returncode == 2 and "cannot be opened as an MLflow store (" in done.stderr
    assert "file is not a database" in done.stderr
    done = cli("run", "--resume", copy)  # the runs are done: the run says tracking is unavailable and why
    assert done.returncode == 0, done.stderr[-2000:]
    no_traceback(done.stderr)
    assert "is unavailable (DamagedStore:" in done.stderr and "cannot be opened as an MLflow store" in done.stderr


def test_an_unsupported_tracking_uri_with_overwrite_is_refused_before_anything_changes(finished, copy):
    _, spec_path = finished
    folder = copy / "runs" / "s-seed0"
    before = (folder / "metrics.csv").read_bytes()
    done = cli("run", spec_path, "--output", copy.parent, "--overwrite", "--tracking-uri", "foo://somewhere")
    assert done.returncode == 2 and "tracking URI 'foo://somewhere': MLflow has no tracking store for the scheme " \
                                    "'foo'" in done.stderr
    no_traceback(done.stderr)
    assert (folder / "metrics.csv").read_bytes() == before


def test_a_store_lock_held_elsewhere_is_named_and_waited_for_a_bounded_time(copy):
    holder = subprocess.Popen(["flock", str(copy / "mlflow.db.lock"), "sleep", "120"])
    try:
        time.sleep(1)  # flock has the lock
        started = time.monotonic()
        done = cli("sync", copy, env={**os.environ, "SPECREACH_STORE_LOCK_SECONDS": "4"})
        assert time.monotonic() - started < 60
        assert done.returncode == 1, done.stderr[-2000:]
        no_traceback(done.stderr)
        assert f"the MLflow store {copy / 'mlflow.db'} is locked by process {holder.pid} (`flock" in done.stderr
        assert "waiting up to 4 s for it" in done.stderr
        assert f"stayed locked by process {holder.pid}" in done.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=30)


def test_sync_against_a_server_nothing_answers_is_a_clear_error(copy):
    url = f"http://127.0.0.1:{free_port()}"
    done = cli("sync", copy, "--tracking-uri", url)
    assert done.returncode == 1 and f"no MLflow server answers at {url}" in done.stderr
    no_traceback(done.stderr)


def test_a_moved_folder_resumes_with_its_own_store_and_nothing_at_the_old_path(finished, tmp_path):
    from mlflow.tracking import MlflowClient

    root, _ = finished
    first, moved = tmp_path / "first", tmp_path / "moved"
    shutil.copytree(root, first / "tiny")
    original_store = (root / "mlflow.db").read_bytes()
    (first / "tiny").rename(tmp_path / "elsewhere")
    shutil.move(tmp_path / "elsewhere", moved / "tiny")
    done = cli("run", "--resume", moved / "tiny")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{moved / 'tiny'} was moved (or copied) from {root}: it tracks in its own store" in done.stderr
    assert (root / "mlflow.db").read_bytes() == original_store  # the store it came from is untouched
    assert not (first / "tiny").exists()  # nothing recreated where it was
    client = MlflowClient(tracking_uri=f"sqlite:///{moved / 'tiny' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and all(run.info.artifact_uri.startswith((moved / "tiny").as_uri()) for run in runs)
    parent = json.loads((moved / "tiny" / "engine.json").read_text())
    assert parent["tracking_uri"] == f"sqlite:///{moved / 'tiny' / 'mlflow.db'}"


# --- what a folder holds ---------------------------------------------------------------------------------

def test_a_changed_spec_whose_runs_differ_is_refused_not_relabelled(finished, copy):
    _, spec_path = finished
    spec_yaml = (copy / "spec.yaml").read_bytes()
    done = cli("run", spec_path, "--output", copy.parent, "train.seeds=[1]", "train.lr=0.001")
    assert done.returncode == 2, done.stderr[-2000:]
    no_traceback(done.stderr)
    assert f"{copy} holds 1 run that this spec does not run: s-seed0 (its spec.yaml changed:" in done.stderr
    assert "train.lr: 0.003 → 0.001" in done.stderr and "train.seeds: [0] → [1]" in done.stderr
    assert "--overwrite" in done.stderr
    assert (copy / "spec.yaml").read_bytes() == spec_yaml and not (copy / "runs" / "s-seed1").exists()


def flip_a_mantissa_bit(checkpoint: Path) -> None:
    """Flip the lowest bit of the first float32 value of the largest tensor stored in the archive."""
    with zipfile.ZipFile(checkpoint) as archive:
        entry = max((e for e in archive.infolist() if "/data/" in e.filename), key=lambda e: e.file_size)
    with open(checkpoint, "r+b") as handle:
        handle.seek(entry.header_offset + 26)
        name_length, extra_length = int.from_bytes(handle.read(2), "little"), int.from_bytes(handle.read(2), "little")
        offset = entry.header_offset + 30 + name_length + extra_length
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 1]))


def test_a_flipped_bit_in_a_checkpoint_is_refused(copy):
    import torch

    folder = copy / "runs" / "s-seed0"
    checkpoint = folder / "checkpoint.pt"
    before = torch.load(checkpoint, weights_only=True)
    flip_a_mantissa_bit(checkpoint)
    after = torch.load(checkpoint, weights_only=True)  # torch itself notices nothing …
    assert after["step"] == before["step"] and any(
        not torch.equal(a, b) for a, b in zip(after["model"].values(), before["model"].values())) or any(
        not torch.equal(a["exp_avg"], b["exp_avg"]) for a, b in zip(after["optimizer"]["state"].values(),
                                                                    before["optimizer"]["state"].values()))
    status = json.loads((folder / "status.json").read_text())
    (folder / "status.json").write_text(json.dumps({**status, "status": "RUNNING"}))  # as a SIGKILL leaves it
    table = (folder / "metrics.csv").read_bytes()
    done = cli("run", "--resume", copy)  # … the checksum does
    assert done.returncode == 1, done.stderr[-2000:]
    no_traceback(done.stderr)
    assert f"s-seed0  FAILED    {checkpoint}: does not match the checksum written with it" in done.stdout
    assert (folder / "metrics.csv").read_bytes() == table
