"""Record, from inside every rule script Snakemake runs, where it ran and what it imported.

:func:`probe_env` writes a ``sitecustomize.py`` into a folder and returns the environment
that puts it on ``PYTHONPATH``. Every Python process started with that environment (and
SLURM passes the environment on: the plugin submits with ``--export=ALL``) loads it; in a
process that runs a Snakemake rule script (``.snakemake/scripts/tmpXXXX.<script>.py``) it
writes, at exit, one JSON file with the script's name, the SLURM job id, the GPUs SLURM
gave the job (``CUDA_VISIBLE_DEVICES``), when it started and ended, and the top-level
modules the process imported.
:func:`read_probes` reads them back::

    env = probe_env(tmp_path / "probe")
    subprocess.run([...snakemake...], env=env)
    for probe in read_probes(tmp_path / "probe"):
        probe["script"], probe["slurm_job_id"], probe["modules"]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_SITECUSTOMIZE = '''\
"""Written by tests/cluster/jobprobe.py: records what each Snakemake rule script saw."""
import atexit
import json
import os
import sys
import time

_START = time.time()
_OUT = {out!r}
_SCRIPT = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""


def _record():
    modules = sorted({{name.partition(".")[0] for name in list(sys.modules)}})
    record = {{
        "script": _SCRIPT.split(".", 1)[1].removesuffix(".py"),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start": _START,
        "end": time.time(),
        "modules": modules,
    }}
    with open(os.path.join(_OUT, f"{{os.getpid()}}.json"), "w") as fh:
        json.dump(record, fh)


if "/.snakemake/scripts/" in os.path.abspath(sys.argv[0] if sys.argv else "") and "." in _SCRIPT:
    atexit.register(_record)

# Chain to the sitecustomize this one shadows (Debian's python has one), if any.
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    _candidate = os.path.join(os.path.abspath(_entry or "."), "sitecustomize.py")
    if os.path.dirname(_candidate) != _here and os.path.isfile(_candidate):
        with open(_candidate) as _fh:
            exec(compile(_fh.read(), _candidate, "exec"), {{"__name__": "sitecustomize"}})
        break
'''


def probe_env(directory: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Write the probe into ``directory`` and return ``base`` (or os.environ) with it on."""
    directory = Path(directory).resolve()
    (directory / "records").mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        _SITECUSTOMIZE.format(out=str(directory / "records"))
    )
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))
    return env


def read_probes(directory: Path) -> list[dict]:
    """The records the rule scripts wrote, one dict per process."""
    return [json.loads(p.read_text()) for p in sorted(Path(directory, "records").glob("*.json"))]
