"""The conda envs of `--sdm conda`: they parse, pin what pyproject pins, and each rule uses
the smallest one that serves it.

Conda channels cannot be reached here, so the envs are never built in the tests. What a
job really imports is checked on a real run in tests/integration/test_report.py
(``test_each_job_imports_only_what_its_conda_env_provides``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.integration.cohort import SNAKEFILE, write_cohort

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "envs"
ENV_NAMES = ["analysis", "tensorflow", "torch"]
MODEL = "<backend of the model>"  # torch or tensorflow, from the model path
DEMO = "<demo.backend>"  # the framework the demo CNN is trained in

# The decision: every rule and the env it runs in. A new rule must be added here.
RULE_ENV = {
    "fetch_demo_tissue": "analysis",  # pip download only
    "make_demo_slides": "analysis",  # scikit-image, openslide, tifffile
    "train_demo_model": DEMO,
    "extract_activations": MODEL,
    "merge_dataset": "analysis",
    "fit_umap": "analysis",
    "project_umap": "analysis",
    "gather_umap": "analysis",
    "plot_umap": "analysis",
    "render_mosaic": "analysis",
    "select_saliency_tiles": "analysis",
    "build_atlas": "analysis",
    "saliency_maps": MODEL,
}
# What makes an env coarser than another: the frameworks it carries.
FRAMEWORKS = {"torch", "torchvision", "timm", "tensorflow", "tf-keras", "umap-learn", "saliency"}
ENV_FRAMEWORKS = {
    "analysis": {"umap-learn"},
    "torch": {"torch", "torchvision", "timm", "saliency"},
    "tensorflow": {"tensorflow", "tf-keras", "saliency"},
}

# Prints {rule: conda env file or null} for the workflow in a directory (Snakemake's API;
# the rules' `conda:` may be a function, so it is evaluated, not read from the .smk files).
_RULE_ENVS_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.iocontainers import Wildcards
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
snakefile, workdir, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(
            configfiles=[Path(workdir, "config.yaml")], config=overrides
        ),
        snakefile=Path(snakefile),
        workdir=Path(workdir),
    )._workflow
    envs = {}
    for rule in workflow.rules:
        spec = rule.expand_conda_env(Wildcards(fromdict={}))
        envs[rule.name] = spec and spec.file.get_path_or_uri(secret_free=True)
print(json.dumps(envs))
"""


def read_env(name: str) -> dict:
    with open(ENVS / f"{name}.yaml") as fh:
        return yaml.safe_load(fh)


def pip_requirements(name: str) -> list[Requirement]:
    deps = read_env(name)["dependencies"]
    pips = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"envs/{name}.yaml: expected one pip: section"
    return [Requirement(r) for r in pips[0]]


def pyproject_requirements() -> dict[str, Requirement]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def test_env_files_are_the_three_the_rules_use():
    assert sorted(p.stem for p in ENVS.glob("*.yaml")) == ENV_NAMES
    assert set(RULE_ENV.values()) - {MODEL, DEMO} | {"torch", "tensorflow"} == set(ENV_NAMES)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_env_parses_with_python_pip_and_channels(name):
    env = read_env(name)
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert conda == ["python=3.11", "pip"], f"envs/{name}.yaml conda packages: {conda}"
    with open(ROOT / "pyproject.toml", "rb") as fh:
        requires_python = SpecifierSet(tomllib.load(fh)["project"]["requires-python"])
    assert Version("3.11") in requires_python
    assert len(pip_requirements(name)) >= 10


@pytest.mark.parametrize("name", ENV_NAMES)
def test_env_pins_agree_with_pyproject(name):
    pinned = pyproject_requirements()
    names = [canonicalize_name(r.name) for r in pip_requirements(name)]
    assert len(names) == len(set(names)), f"envs/{name}.yaml lists a package twice"
    for req in pip_requirements(name):
        key = canonicalize_name(req.name)
        assert key in pinned, f"envs/{name}.yaml: {req.name} is not a dependency in pyproject.toml"
        assert req.specifier == pinned[key].specifier, (
            f"envs/{name}.yaml pins {req}, pyproject.toml {pinned[key]}"
        )
        # and what is installed here (from pyproject) satisfies the env's pin
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (
            f"{req.name} {installed} installed, envs/{name}.yaml wants {req.specifier}"
        )


@pytest.mark.parametrize("name", ENV_NAMES)
def test_env_carries_only_its_frameworks(name):
    listed = {canonicalize_name(r.name) for r in pip_requirements(name)}
    assert listed & FRAMEWORKS == ENV_FRAMEWORKS[name]


def rule_envs(directory: Path, **overrides) -> dict[str, str | None]:
    proc = subprocess.run(
        [sys.executable, "-c", _RULE_ENVS_SCRIPT, str(SNAKEFILE), str(directory)]
        + [json.dumps(overrides)],
        capture_output=True,
        text=True,
        cwd=directory,
    )
    assert proc.returncode == 0, proc.stderr
    envs = json.loads(proc.stdout.strip().splitlines()[-1])
    root = ROOT.as_posix() + "/"
    return {
        rule: env and Path(env).resolve().as_posix().removeprefix(root)
        for rule, env in envs.items()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    directory = tmp_path_factory.mktemp("envs")
    write_cohort(directory, ["s1", "s2"])
    return directory


DEMO_RULES = {"fetch_demo_tissue", "make_demo_slides", "train_demo_model"}


def expected_envs(model: str, demo: str | None = None) -> dict[str, str]:
    """Each rule's env; the demo's rules exist only where the demo is built (``demo``)."""
    chosen = {MODEL: model, DEMO: demo}
    return {
        rule: f"envs/{chosen.get(env, env)}.yaml"
        for rule, env in RULE_ENV.items()
        if demo is not None or rule not in DEMO_RULES
    }


def test_each_rule_points_at_its_env_torch_model(cohort):
    envs = rule_envs(cohort)
    assert envs.pop("all") is None  # the target rule runs nothing
    assert envs == expected_envs("torch")


def test_a_keras_model_moves_its_rules_to_the_tensorflow_env(cohort):
    (cohort / "model.keras").write_bytes(b"")  # the backend is read from the suffix only
    envs = rule_envs(cohort, model="model.keras")
    envs.pop("all")
    assert envs == expected_envs("tensorflow")  # no demo rules: the demo is not built


def test_a_keras_demo_trains_in_the_tensorflow_env(cohort):
    # the cohort's own sheet with the demo model, not built yet: the demo's rules build it
    envs = rule_envs(
        cohort, model="resources/demo/model", demo={"backend": "tensorflow"}, tiles={"px": 224}
    )
    envs.pop("all")
    assert envs == expected_envs("tensorflow", demo="tensorflow")


def test_the_keras_demo_runs_every_model_rule_in_the_tensorflow_env(cohort):
    demo = {
        "slides": "resources/demo/slides.csv",
        "model": "resources/demo/model",
        "tiles": {"px": 224},
    }
    envs = rule_envs(cohort, **demo, demo={"backend": "tensorflow"})
    envs.pop("all")
    assert envs == expected_envs("tensorflow", demo="tensorflow")
    envs = rule_envs(cohort, **demo)  # the shipped demo: torch
    envs.pop("all")
    assert envs == expected_envs("torch", demo="torch")
