"""The `paretoserve` command line, run in-process through `main(argv)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from paretoserve.shell.main import main

PIPELINE = {
    "apiVersion": "paretoserve.io/v1alpha1",
    "kind": "ServingPipeline",
    "metadata": {"name": "tiny"},
    "spec": {
        "slo": {"latencyMs": 200},
        "objective": {"accuracy": 1, "cost": 0.01},
        "stages": [
            {
                "name": "detector",
                "batchSizes": [1, 2],
                "variants": [
                    {"name": "small", "tritonModel": "small", "accuracy": 0.6,
                     "profile": {"points": [{"batch": 1, "latencyMs": 10}, {"batch": 2, "latencyMs": 15}]}},
                    {"name": "large", "tritonModel": "large", "accuracy": 0.8,
                     "profile": {"points": [{"batch": 1, "latencyMs": 50}, {"batch": 2, "latencyMs": 80}]}},
                ],
            },
            {
                "name": "classifier",
                "dependsOn": ["detector"],
                "variants": [
                    {"name": "r18", "tritonModel": "r18", "accuracy": 0.7,
                     "profile": {"points": [{"batch": 1, "latencyMs": 20}]}},
                ],
            },
        ],
    },
}


def write(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_plan_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", write(tmp_path, PIPELINE), "--load", "30", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["status"] == "optimal"
    assert [s["name"] for s in plan["stages"]] == ["detector", "classifier"]
    detector = plan["stages"][0]["allocations"][0]
    assert detector["variant"] == "large" and detector["replicas"] == 2  # 30 rps / (1000/50 ms per replica)
    assert plan["latencyMs"] == pytest.approx(70.0) and plan["solveMs"] > 0


def test_plan_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", write(tmp_path, PIPELINE), "--load", "30"]) == 0
    out = capsys.readouterr().out
    assert "detector" in out and "large" in out and "status: optimal" in out


def test_infeasible_plan_exits_1_with_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json.dumps(PIPELINE))
    doc["spec"]["slo"]["latencyMs"] = 5
    assert main(["plan", write(tmp_path, doc), "--load", "30", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert plan["status"] == "infeasible" and plan["reason"]["binding"] == "slo"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"].pop("slo"), "spec.slo"),
        (lambda d: d["spec"]["stages"][0]["variants"][0].__setitem__("accuracy", "high"),
         "spec.stages[0].variants[0].accuracy"),
        (lambda d: d["spec"]["stages"][1].__setitem__("dependsOn", ["nowhere"]), "spec.stages[1].dependsOn[0]"),
        (lambda d: d["spec"]["slo"].__setitem__("latencyMs", -1), "spec.slo.latencyMs"),
    ],
)
def test_broken_file_prints_one_line_naming_the_field_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: object, field: str
) -> None:
    doc = json.loads(json.dumps(PIPELINE))
    mutate(doc)  # type: ignore[operator]
    assert main(["plan", write(tmp_path, doc), "--load", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0]


def test_missing_file_and_not_yaml_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(tmp_path / "absent.yaml"), "--load", "1"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    assert main(["plan", str(bad), "--load", "1"]) == 2
    assert main(["plan", write(tmp_path, PIPELINE), "--load", "-3"]) == 2
    assert all(len(line) > 0 for line in capsys.readouterr().err.splitlines())


def test_the_shell_names_every_benchmark_and_experiment_of_the_research_package() -> None:
    """The parser names them without importing the research package (the sidecar image leaves it out)."""
    from paretoserve.research.benchmarks import BENCHMARKS
    from paretoserve.research.experiments import EXPERIMENTS
    from paretoserve.shell.commands import bench, experiment

    assert set(bench.NAMES) == set(BENCHMARKS)
    assert set(experiment.NAMES) == set(EXPERIMENTS)


# -- hostile input: one line naming the option or the field, exit 2, never a traceback (F22) ------------------

DYNAMIC = json.loads(json.dumps(PIPELINE))
DYNAMIC["spec"]["slo"]["dynamic"] = {"safetyFraction": 0.1}


@pytest.mark.parametrize(("args", "option"), [
    (["--load", "nan"], "--load"),
    (["--load", "inf"], "--load"),
    (["--load", "-1"], "--load"),
    (["--load", "1e308"], "--load"),
    (["--load", "1", "--min-deadline-ms", "nan"], "--min-deadline-ms"),
    (["--load", "1", "--min-deadline-ms", "inf"], "--min-deadline-ms"),
    (["--load", "1", "--min-deadline-ms", "1.7e308"], "--min-deadline-ms"),
    (["--load", "1", "--min-deadline-ms", "-5"], "--min-deadline-ms"),
    (["--load", "1", "--min-deadline-ms=-1e9"], "--min-deadline-ms"),
    (["--load", "1", "--time-limit", "-1"], "--time-limit"),
    (["--load", "1", "--time-limit", "nan"], "--time-limit"),
    (["--load", "1", "--time-limit", "0"], "--time-limit"),
    (["--load", "1", "--time-limit", "1e9"], "--time-limit"),
])
def test_options_the_planner_cannot_honour_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], option: str
) -> None:
    assert main(["plan", write(tmp_path, DYNAMIC), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"paretoserve: error: {option}:"), err


def test_a_deadline_for_a_pipeline_without_a_dynamic_slo_is_an_error_not_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", write(tmp_path, PIPELINE), "--load", "1", "--min-deadline-ms", "50"]) == 2
    assert "spec.slo.dynamic" in capsys.readouterr().err
    assert main(["plan", write(tmp_path, DYNAMIC), "--load", "1", "--min-deadline-ms", "150", "--json"]) == 0


def _laughs() -> str:
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, 10):
        text += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]\n"
    return text


@pytest.mark.parametrize(("content", "says"), [
    (b"apiVersion: \xff\xfe paretoserve.io/v1alpha1\n", "not UTF-8"),
    (("[" * 20000 + "]" * 20000).encode(), "<yaml>"),
    (_laughs().encode(), "expands to more than"),
    (b"&a [*a]\n", "nested more than"),
    (b"", "empty"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"spec: [unclosed\n", "not valid YAML"),
    (b"#" * (3 * 1024 * 1024 + 1), "larger than"),
])
def test_hostile_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
                                           says: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    assert main(["plan", str(path), "--load", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and says in err[0], err


def test_a_spec_the_planner_would_have_dropped_silently_is_refused(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json.dumps(PIPELINE))
    doc["spec"]["stages"][1]["variants"][0]["profile"] = {
        "sponge": {"gamma": -1.0, "delta": -2.0, "epsilon": -3.0, "eta": -4.0, "cpus": [1, 2]}}
    assert main(["plan", write(tmp_path, doc), "--load", "1"]) == 2
    assert "spec.stages[1].variants[0].profile.sponge" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "names"), [
    # -1e9 looks like a flag to argparse
    (["plan", "x.yaml", "--load", "1", "--min-deadline-ms", "-1e9"], "argument --min-deadline-ms"),
    (["plan", "x.yaml"], "--load"),
    (["plan", "x.yaml", "--load", "one"], "argument --load"),
    (["no-such-command"], "argument command"),
    (["plan", "x.yaml", "--load", "1", "--baseline", "best"], "argument --baseline"),
])
def test_argparse_refusals_are_one_line_naming_the_argument(capsys: pytest.CaptureFixture[str], args: list[str],
                                                           names: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and names in err[0], err


@pytest.mark.parametrize(("args", "says"), [
    (["sponge", "--windows", "auto"], "Twitter-trace experiments"),
    (["ipa-video", "--windows", "auto:0"], "--windows must be"),
    (["ipa-video", "--windows", "auto", "--quick"], "cannot be combined"),
])
def test_experiment_windows_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  args: list[str], says: str) -> None:
    assert main(["experiment", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("content", "args", "says"), [
    ("kind: FusionSpec\napiVersion: paretoserve.io/v1alpha1\nmetadata: {name: f}\nspec:\n"
     "  tasks: [{name: a, labels: digit, channels: [0]}, {name: b, labels: parity, channels: [8]}]\n",
     [], "spec.tasks[0].channels"),
    ("kind: ServingPipeline\n", [], "no document of kind FusionSpec"),
    ("kind: FusionSpec\n", ["--theta", "0.7"], "argument --theta: must be in [0, 0.5]"),
    ("kind: FusionSpec\n", ["--budget-minutes", "0"], "argument --budget-minutes"),
])
def test_fuse_refusals_are_one_line_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    content: str, args: list[str], says: str) -> None:
    spec = tmp_path / "fusion.yaml"
    spec.write_text(content)
    assert main(["fuse", str(spec), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "out").exists()
