"""The workflow profiles: every key is an option this Snakemake and SLURM plugin know, and
the SLURM profile's resources fit the rules (fast; tests/cluster/test_slurm.py runs it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
GPU_RULES = {"extract_activations", "saliency_maps"}


def load(name: str) -> dict:
    with open(PROFILES / name / "profile.yaml") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def cli_options() -> set[str]:
    """Long options of this Snakemake, with its installed executor plugins' (--slurm-...)."""
    from snakemake.cli import get_argument_parser

    parser = get_argument_parser()
    return {o[2:] for action in parser._actions for o in action.option_strings if o[:2] == "--"}


def rule_declarations() -> dict[str, str]:
    """{rule name: its text} from workflow/rules/*.smk (rules inside an `if` block too)."""
    rules = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        name, indent, body = None, 0, []
        for line in smk.read_text().splitlines() + ["end"]:
            depth = len(line) - len(line.lstrip())
            if name is not None and (not line.strip() or depth > indent):
                body.append(line)
                continue
            if name is not None:
                rules[name] = "\n".join(body) + "\n"
                name = None
            match = re.match(r"^([ \t]*)rule (\w+):$", line)
            if match:
                name, indent, body = match.group(2), len(match.group(1)), []
    return rules


def test_profiles_are_profile_yaml_only():
    # Snakemake >= 9.19 reads profile.yaml (config.yaml only for backwards compatibility);
    # with both in one folder it would pick one of them arbitrarily.
    for name in ("default", "gpu", "slurm"):
        assert sorted(p.name for p in (PROFILES / name).iterdir()) == ["profile.yaml"]


def test_snakefile_requires_a_snakemake_that_reads_profile_yaml():
    match = re.search(r'min_version\("(\d+)\.(\d+)', (ROOT / "Snakefile").read_text())
    assert match and (int(match.group(1)), int(match.group(2))) >= (9, 19)


@pytest.mark.parametrize("name", ["default", "gpu", "slurm"])
def test_every_key_is_an_option_of_this_snakemake(name, cli_options):
    text = (PROFILES / name / "profile.yaml").read_text()
    keys = set(load(name))
    # keys shown commented out, for the user to switch on, must exist as well
    keys |= set(re.findall(r"^# ?([a-z][a-z-]+): ", text, re.M))
    unknown = sorted(keys - cli_options)
    assert unknown == [], f"profiles/{name}/profile.yaml: not options of this Snakemake: {unknown}"


@pytest.mark.parametrize("name", ["default", "gpu", "slurm"])
def test_every_top_level_entry_is_commented(name):
    lines = (PROFILES / name / "profile.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z-]+:", line):
            assert "#" in line or lines[i - 1].startswith("#"), (
                f"profiles/{name}/profile.yaml line {i + 1} has no comment: {line!r}"
            )


def test_default_profile_runs_one_gpu_job_at_a_time():
    profile = load("default")
    assert profile["resources"] == {"gpu": 1}
    assert "executor" not in profile and "set-resources" not in profile


def test_gpu_profiles_give_extraction_enough_reader_cores():
    """A GPU outruns the tile readers: 16 of them (benchmarks/README.md), not the rule's 4."""
    gpu, slurm = load("gpu"), load("slurm")
    assert gpu["resources"] == {"gpu": 1} and "executor" not in gpu
    assert gpu["set-threads"]["extract_activations"] >= 16
    assert slurm["set-threads"]["extract_activations"] >= 16
    assert set(gpu["set-threads"]) <= set(rule_declarations())
    assert re.search(r"threads: 4\b", rule_declarations()["extract_activations"])


def test_slurm_profile_resources_fit_the_rules():
    profile = load("slurm")
    rules = rule_declarations()
    assert profile["executor"] == "slurm"
    assert profile["keep-going"] is True and profile["retries"] >= 1
    set_resources = profile["set-resources"]
    assert set(set_resources) <= set(rules), set(set_resources) - set(rules)
    assert set(profile["set-threads"]) <= set(rules)
    # The rules ask for a GPU with `resources: gpu=1` and nothing cluster-specific ...
    declared_gpu = {name for name, body in rules.items() if re.search(r"\bgpu=1\b", body)}
    assert declared_gpu == GPU_RULES
    for name, body in rules.items():
        assert not re.search(r"slurm|partition|mem_mb|runtime", body), (
            f"rule {name} is cluster-specific"
        )
    # ... the profile sends those to a GPU partition with one GPU each.
    for rule, resources in set_resources.items():
        if rule in GPU_RULES:
            assert resources["gpu"] == 1 and resources["slurm_partition"] == "gpu"
        else:
            assert "gpu" not in resources and resources.get("slurm_partition", "cpu") == "cpu"
    assert profile["default-resources"]["slurm_partition"] == "cpu"
    # a job uses as many threads as it has cores
    for rule, threads in profile["set-threads"].items():
        assert set_resources[rule]["cpus_per_task"] == threads, rule
    # GPUs are counted per SLURM job (so that a group of slides shares one GPU)
    assert profile["set-resource-scopes"] == {"gpu": "local"}
    assert profile["resources"] == {"gpu": 1}


def test_slurm_profile_memory_grows_with_each_retry():
    profile = load("slurm")
    memory = [profile["default-resources"]["mem_mb"]]
    memory += [r["mem_mb"] for r in profile["set-resources"].values() if "mem_mb" in r]
    assert all(re.fullmatch(r"\d+ \* attempt", str(m)) for m in memory), memory
