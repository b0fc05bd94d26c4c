"""The workflow on a real SLURM cluster: single node, on this machine, with fake GPUs.

``../shared/slurm/start.sh`` installs Debian's slurm-wlm and munge if missing (as root),
starts munged, slurmctld and slurmd on localhost with two fake GPUs (gres ``gpu:fake:2``),
and ``stop.sh`` stops exactly those daemons by their PID files at the end. The tiny
cohort then runs three times at once:

- through SLURM with ``--workflow-profile``: profiles/slurm/profile.yaml with only the
  cluster-specific values changed for this cluster (partition ``debug``, small memory and
  runtimes, one core per job, ``gpu_model: fake``, ``squeue`` for the status as this
  cluster has no accounting database) -- per-slide activations, the dataset table and the
  saliency maps, so both GPU rules run;
- through SLURM again with the three slides grouped into one GPU allocation
  (``--groups extract_activations=extract --group-components extract=3``, as the README
  shows);
- locally, as the reference the SLURM outputs must equal.

A probe (``tests/cluster/jobprobe.py``) records, inside each rule script, the SLURM job id
and ``CUDA_VISIBLE_DEVICES`` it ran with; ``scontrol show job`` (which keeps finished jobs
for MinJobAge = 300 s) shows what SLURM allocated.

At the end the configuration start.sh wrote (/etc/slurm/slurm.conf, gres.conf, the fake GPU
devices) is put back as it was: a slurm.conf naming a controller that is down makes every
later ``snakemake`` start about 10 s slower (the SLURM plugin asks ``scontrol show config``
when it is imported, and scontrol waits for the controller).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.cluster.jobprobe import probe_env, read_probes
from tests.integration.cohort import SNAKEFILE, add_slide, tiny_config, write_cohort

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHARED_SLURM = ROOT.parent / "shared" / "slurm"
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
PID_FILES = ("/run/slurm/slurmctld.pid", "/run/slurm/slurmd.pid", "/run/munge/munged.pid")
CONF_FILES = (Path("/etc/slurm/slurm.conf"), Path("/etc/slurm/gres.conf"))
LOCK = Path(tempfile.gettempdir()) / "histoatlas-slurm-test.lock"

SLIDES = ["s1", "s2", "s3"]
H5 = [f"results/features/tiny/{s}.h5" for s in SLIDES]
COORDS = "results/tiny/umap/coords.parquet"
TARGETS = H5 + [
    "results/tiny/dataset/tiles.parquet",
    COORDS,
    "results/tiny/saliency/overview.png",
]
# one projection job per slide, and fewer tiles fitted than the slides have
UMAP = ["--config", "umap={shard_slides: 1, max_tiles_per_slide: 30}"]
GPU_RULES = {"extract_activations", "saliency_maps"}
EXPECTED_JOBS = {
    "extract_activations": len(SLIDES),
    "merge_dataset": 1,
    "fit_umap": 1,
    "project_umap": len(SLIDES),
    "gather_umap": 1,
    "select_saliency_tiles": 1,
    "saliency_maps": 1,
}
RUNTIME = 10  # minutes per job in the test profile
RUN_TIMEOUT = 420  # seconds per snakemake run
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def cluster_profile() -> dict:
    """profiles/slurm/profile.yaml with this cluster's values in place of the EDIT ones."""
    with open(ROOT / "profiles" / "slurm" / "profile.yaml") as fh:
        profile = yaml.safe_load(fh)
    profile.update(
        {
            "jobs": 4,
            "latency-wait": 5,
            "retries": 0,  # a failure here is a bug: report it at once
            "slurm-status-command": "squeue",  # no slurmdbd: sacct cannot answer
            "slurm-init-seconds-before-status-checks": 2,
            "slurm-keep-successful-logs": True,
        }
    )

    def small(resources: dict) -> None:
        if "slurm_partition" in resources:
            resources["slurm_partition"] = "debug"
        if "mem_mb" in resources:  # keep the `* attempt` expression
            resources["mem_mb"] = re.sub(r"^\d+", "1000", str(resources["mem_mb"]))
        resources["runtime"] = RUNTIME
        resources["cpus_per_task"] = 1  # two cores on the test node
        if resources.get("gpu"):
            resources["gpu_model"] = "fake"

    small(profile["default-resources"])
    for resources in profile["set-resources"].values():
        small(resources)
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    return profile


def daemon_pids() -> dict[str, int]:
    pids = {}
    for pid_file in PID_FILES:
        if Path(pid_file).is_file():
            pids[pid_file] = int(Path(pid_file).read_text().split()[0])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster (two fake GPUs), stopped by PID at the end."""
    start, stop = SHARED_SLURM / "start.sh", SHARED_SLURM / "stop.sh"
    if not start.is_file() or not stop.is_file():
        pytest.skip(f"{start} and stop.sh not found: they stand up the test cluster")
    if os.geteuid() != 0:
        pytest.skip("needs root: start.sh installs slurm-wlm and munge and starts the daemons")
    installed = all(Path(d).exists() for d in DAEMONS) and shutil.which("sbatch")
    if not installed and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")

    # the session's SLURM_CONF=/dev/null (tests/conftest.py) is for local runs: not here
    slurm_conf = os.environ.pop("SLURM_CONF", None)
    # a SIGTERM (a CI timeout) must still stop the daemons and put the config back: a
    # slurm.conf naming a controller that is down costs every later snakemake call ~9 s
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    lock = open(LOCK, "w")  # one cluster on this machine: other test sessions wait here
    waited = time.monotonic()
    fcntl.flock(lock, fcntl.LOCK_EX)
    waited = time.monotonic() - waited
    conf_before = {p: p.read_bytes() if p.is_file() else None for p in CONF_FILES}
    devices_before = set(Path("/dev").glob("fakegpu*"))
    log = tmp_path_factory.mktemp("slurm-cluster") / "start.log"
    env = dict(os.environ, FAKE_GPUS="2", SKIP_APT="1" if installed else "0")
    t0 = time.monotonic()
    pids = {}
    try:
        with open(log, "w") as out:
            proc = subprocess.run(
                ["bash", str(start)], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600
            )
        pids = daemon_pids()
        if proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            if not all(Path(d).exists() for d in DAEMONS):
                pytest.skip(f"could not install SLURM with apt-get:\n{tail}")
            pytest.fail(f"start.sh failed (exit {proc.returncode}):\n{tail}")
        yield SimpleNamespace(start_seconds=time.monotonic() - t0, waited=waited, pids=pids)
    finally:
        pids = {**pids, **daemon_pids()}
        subprocess.run(["bash", str(stop)], capture_output=True, timeout=120)
        for pid in pids.values():  # stop.sh stops them by PID file; make sure of it
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for path, content in conf_before.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        for device in set(Path("/dev").glob("fakegpu*")) - devices_before:
            device.unlink()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        signal.signal(signal.SIGTERM, previous_sigterm)
        if slurm_conf is not None:
            os.environ["SLURM_CONF"] = slurm_conf
        left = {f: p for f, p in pids.items() if alive(p)}
        assert not left, f"SLURM daemons still running after stop.sh: {left}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}: stopping the test cluster")


def start_snakemake(directory: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args]
    cmd += ["--directory", str(directory), "--configfile", "config.yaml"]
    out = open(directory / "snakemake.out", "w")
    return subprocess.Popen(cmd, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, directory: Path, deadline: float) -> str:
    """Wait for a run; past the deadline, SIGINT (cancels its SLURM jobs), then kill."""
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    output = (directory / "snakemake.out").read_text()
    assert proc.returncode == 0, f"snakemake in {directory} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    t0 = time.monotonic()
    base = tmp_path_factory.mktemp("slurm-runs")
    write_cohort(base / "cohort", SLIDES)
    cohort_seconds = time.monotonic() - t0
    dirs = {}
    for name in ("local", "slurm", "grouped"):
        dirs[name] = shutil.copytree(base / "cohort", base / name)
    profile = base / "profile" / "profile.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump(cluster_profile(), sort_keys=False))

    t0 = time.monotonic()
    slurm_args = ["--workflow-profile", str(profile)]
    procs = {
        "slurm": start_snakemake(
            dirs["slurm"], *TARGETS, *slurm_args, *UMAP, env=probe_env(base / "probe-slurm")
        ),
        "grouped": start_snakemake(
            dirs["grouped"],
            *H5,
            COORDS,
            *slurm_args,
            *UMAP,
            "--groups",
            "extract_activations=extract",
            "project_umap=project",
            "--group-components",
            "extract=3",
            # shards of a group run side by side, so its job asks for a core each: two fit
            # the test node's two cores
            "project=2",
            env=probe_env(base / "probe-grouped"),
        ),
        "local": start_snakemake(dirs["local"], *TARGETS, *UMAP, "--cores", "2"),
    }
    deadline = time.monotonic() + RUN_TIMEOUT
    outputs = {name: finish(proc, dirs[name], deadline) for name, proc in procs.items()}
    seconds = time.monotonic() - t0
    print(
        f"\nwaited {slurm_cluster.waited:.1f} s for the cluster lock; cluster start "
        f"{slurm_cluster.start_seconds:.1f} s; cohort {cohort_seconds:.1f} s; "
        f"three runs at once {seconds:.1f} s"
    )
    return SimpleNamespace(
        dirs=dirs,
        out=outputs,
        probes={k: read_probes(base / f"probe-{k}") for k in ("slurm", "grouped")},
    )


def submitted_jobs(output: str) -> dict[str, list[tuple[str, str]]]:
    """{rule or group: [(SLURM job id, its log)]} from Snakemake's output."""
    jobs: dict[str, list[tuple[str, str]]] = {}
    for job_id, log in SUBMITTED.findall(output):
        kind = re.search(r"/(rule|group)_(\w+?)(?:_(?:extract_activations|project_umap))?/", log)
        assert kind, log
        jobs.setdefault(kind.group(2), []).append((job_id, log))
    return jobs


def scontrol(job_id: str) -> dict[str, str]:
    proc = subprocess.run(
        ["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, check=True
    )
    return dict(re.findall(r"(\w+(?:/\w+)?)=(\S*)", proc.stdout))


def test_every_job_went_through_slurm(runs):
    jobs = submitted_jobs(runs.out["slurm"])
    assert {rule: len(v) for rule, v in jobs.items()} == EXPECTED_JOBS
    ids = [job_id for v in jobs.values() for job_id, _ in v]
    assert len(set(ids)) == len(ids)
    for rule, submitted in jobs.items():
        for job_id, log in submitted:
            record = scontrol(job_id)
            assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", record
            assert record["Partition"] == "debug"
            assert record["WorkDir"] == str(runs.dirs["slurm"])
            assert record["Comment"].startswith(f"rule_{rule}"), record["Comment"]
            assert record["TimeLimit"] == f"00:{RUNTIME:02d}:00"
            # the job's own log (kept: slurm-keep-successful-logs) shows the rule it ran
            assert Path(log).is_file() and f"rule {rule}:" in Path(log).read_text()
    # the three slides were submitted at once: the GPU is counted per job, not globally
    assert "Execute 3 jobs..." in runs.out["slurm"]
    # so were the three projection shards: separate SLURM jobs, side by side
    shards = {job_id: scontrol(job_id) for job_id, _ in jobs["project_umap"]}
    assert len(shards) == 3 and all(r["JobState"] == "COMPLETED" for r in shards.values())


def test_gpu_rules_got_a_gpu_and_the_others_none(runs):
    jobs = submitted_jobs(runs.out["slurm"])
    for rule, submitted in jobs.items():
        for job_id, _ in submitted:
            tres = scontrol(job_id).get("TresPerJob", "")
            if rule in GPU_RULES:
                assert tres == "gres:gpu:fake:1", (rule, tres)
            else:
                assert "gpu" not in tres, (rule, tres)
    # inside the jobs: each rule script ran in the SLURM job Snakemake reported, and
    # the GPU rules saw the GPU SLURM gave them
    probes = runs.probes["slurm"]
    assert sorted(p["script"] for p in probes) == sorted(
        rule for rule, n in EXPECTED_JOBS.items() for _ in range(n)
    )
    for probe in probes:
        rule = probe["script"]
        assert probe["slurm_job_id"] in {job_id for job_id, _ in jobs[rule]}, probe
        if rule in GPU_RULES:
            assert re.fullmatch(r"[01]", probe["cuda_visible_devices"] or ""), probe
        else:
            assert probe["cuda_visible_devices"] is None, probe


def assert_same_h5(a: Path, b: Path) -> None:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        np.testing.assert_array_equal(fa["coords"][()], fb["coords"][()])
        np.testing.assert_array_equal(fa["grid"][()], fb["grid"][()])
        assert fa["features"].shape == fb["features"].shape and len(fa["coords"]) > 20
        np.testing.assert_allclose(fa["features"][()], fb["features"][()], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fa["predictions"][()], fb["predictions"][()], atol=1e-6)


def test_outputs_equal_a_local_run(runs):
    local, slurm = runs.dirs["local"], runs.dirs["slurm"]
    for h5 in H5:
        assert_same_h5(local / h5, slurm / h5)
    for table in ("tiles", "slides"):
        path = f"results/tiny/dataset/{table}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(local / path), pd.read_parquet(slurm / path))
    # the map: shards projected in three SLURM jobs equal the local run's, tile for tile
    pd.testing.assert_frame_equal(pd.read_parquet(local / COORDS), pd.read_parquet(slurm / COORDS))
    selected = pd.read_csv(local / "results/tiny/saliency/tiles.csv")
    pd.testing.assert_frame_equal(selected, pd.read_csv(slurm / "results/tiny/saliency/tiles.csv"))
    maps = pd.read_csv(local / "results/tiny/saliency/maps.csv")
    methods = tiny_config()["saliency"]["methods"]  # the shipped config's six
    assert len(maps) == len(selected) * len(methods) and set(maps["method"]) == set(methods)
    for npy in maps["npy"]:
        np.testing.assert_allclose(np.load(local / npy), np.load(slurm / npy), atol=1e-5)


def test_grouped_slides_share_one_gpu_allocation(runs):
    jobs = submitted_jobs(runs.out["grouped"])
    assert {k: len(v) for k, v in jobs.items()} == {
        "extract": 1,
        "merge_dataset": 1,
        "fit_umap": 1,
        "project": 2,  # the three shards in two SLURM jobs: two, then one
        "gather_umap": 1,
    }, jobs
    job_id = jobs["extract"][0][0]
    record = scontrol(job_id)
    assert record["JobState"] == "COMPLETED"
    assert record["TresPerJob"] == "gres:gpu:fake:1"  # one GPU, not one per slide
    assert record["TimeLimit"] == f"00:{3 * RUNTIME:02d}:00"  # the slides run in turn
    probes = sorted(runs.probes["grouped"], key=lambda p: p["start"])
    shards = [p for p in probes if p["script"] == "project_umap"]
    per_job = sorted(
        sum(p["slurm_job_id"] == job_id for p in shards) for job_id, _ in jobs["project"]
    )
    assert per_job == [1, 2], per_job
    two = next(j for j, _ in jobs["project"] if sum(p["slurm_job_id"] == j for p in shards) == 2)
    assert scontrol(two)["NumCPUs"] == "2"  # side by side in one allocation
    pd.testing.assert_frame_equal(
        pd.read_parquet(runs.dirs["local"] / COORDS), pd.read_parquet(runs.dirs["grouped"] / COORDS)
    )
    probes = [p for p in probes if p["script"] == "extract_activations"]
    assert len(probes) == 3
    assert {p["slurm_job_id"] for p in probes} == {job_id}
    assert len({p["cuda_visible_devices"] for p in probes}) == 1
    for before, after in zip(probes, probes[1:], strict=False):
        assert before["end"] <= after["start"]  # one after another on the one GPU
    for h5 in H5:
        assert_same_h5(runs.dirs["local"] / h5, runs.dirs["grouped"] / h5)


def test_a_kept_map_projects_a_new_slide_alone(runs, tmp_path):
    """A cohort whose map is kept (umap.reference): one more slide runs one extraction and
    one projection job on the cluster, and the gather."""
    directory = shutil.copytree(runs.dirs["slurm"], tmp_path / "kept", symlinks=True)
    (directory / "maps").mkdir()
    shutil.copy(directory / "results/tiny/umap/umap.joblib", directory / "maps/tiny.joblib")
    kept = ["--config", "umap={reference: maps/tiny.joblib, shard_slides: 1}"]
    local = start_snakemake(directory, COORDS, *kept, "--cores", "2")  # the kept map, locally
    finish(local, directory, time.monotonic() + RUN_TIMEOUT)
    before = pd.read_parquet(directory / COORDS)
    add_slide(directory, "s4", seed=7)
    profile = tmp_path / "profile" / "profile.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump(cluster_profile(), sort_keys=False))
    proc = start_snakemake(directory, COORDS, "--workflow-profile", str(profile), *kept)
    output = finish(proc, directory, time.monotonic() + RUN_TIMEOUT)
    jobs = submitted_jobs(output)
    assert {k: len(v) for k, v in jobs.items()} == {
        "extract_activations": 1,
        "project_umap": 1,
        "gather_umap": 1,
    }, jobs
    coords = pd.read_parquet(directory / COORDS)
    assert coords["slide"].unique().tolist() == [*SLIDES, "s4"]
    # the other slides kept their places on the kept map, tile for tile
    pd.testing.assert_frame_equal(coords.iloc[: len(before)], before)
