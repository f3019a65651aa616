#!/usr/bin/env python3
"""Generate the example ServingPipelines that are derived from the seed systems' published data.

    .venv/bin/python manifests/examples/generate.py          # rewrite the generated examples
    .venv/bin/python manifests/examples/generate.py --check  # exit 1 if a committed file is stale

Why a script: the InfAdapter profile has 100 measured points and the DiffServe cascade 21 f(t) rows;
typing them by hand invites transcription errors, and the script records exactly how each number was
derived. The measurements are read from the shared reference data (``<repo>/../shared/data``, see its
README for origins) and never copied into the repository; only the derived manifests are committed.
`agent-workflow.yaml` is hand-written and not produced here.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DATA = REPO_ROOT.parent / "shared" / "data"

API_VERSION = "paretoserve.io/v1alpha1"
KIND = "ServingPipeline"


class Flow(list):  # type: ignore[type-arg]
    """A list written in YAML flow style (`[1, 2, 4]`)."""


class FlowMap(dict):  # type: ignore[type-arg]
    """A mapping written in YAML flow style (`{batch: 1, latencyMs: 37.0}`)."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_Dumper.add_representer(FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))


def render(header: str, document: dict[str, Any]) -> str:
    """The manifest text: a comment header, then the document in key order."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.strip("\n").splitlines())
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
    return comment + body


def _manifest(name: str, spec: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "paretoserve-examples", **labels}},
        "spec": spec,
    }


# --------------------------------------------------------------------------------------------------
# IPA video pipeline: YOLOv5 n..x -> ResNet-18..152
# --------------------------------------------------------------------------------------------------

# Public compute costs in GFLOPs per image: YOLOv5 at 640 px (ultralytics/yolov5 README table) and
# ResNet at 224 px (torchvision's classification weights table). Used only to make synthetic latencies
# grow with model size in a defensible way.
YOLO_GFLOPS = {"yolov5n": 4.5, "yolov5s": 16.5, "yolov5m": 49.0, "yolov5l": 109.1, "yolov5x": 205.7}
RESNET_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 4.1, "resnet101": 7.8, "resnet152": 11.5}
IPA_BATCHES = [1, 2, 4, 8]
IPA_SLA_FACTOR = 5  # IPA models.py: a stage's SLA is sla_factor x its mean batch-1 latency


def _ipa_cpu(variant: str) -> int:
    return 2 if variant in ("yolov5x", "resnet152") else 1


def _ipa_l1(gflops: float, cpu: int) -> float:
    """SYNTHETIC batch-1 latency: 10 ms fixed overhead + 6 ms per GFLOP per core."""
    return round(10.0 + 6.0 * gflops / cpu, 1)


def _ipa_stage(name: str, gflops: dict[str, float], accuracy: dict[str, float],
               depends_on: list[str]) -> tuple[dict[str, Any], float]:
    variants = []
    l1s = []
    for variant, flops in gflops.items():
        cpu = _ipa_cpu(variant)
        l1 = _ipa_l1(flops, cpu)
        l1s.append(l1)
        points = []
        for b in IPA_BATCHES:
            latency = round(l1 * (0.6 + 0.4 * b), 1)
            points.append(FlowMap(batch=b, latencyMs=latency, throughputRps=round(b * 1000.0 / latency, 2)))
        variants.append({
            "name": variant,
            "tritonModel": variant,
            "accuracy": round(accuracy[variant] / 100.0, 6),
            "resources": {"cpu": cpu, "memoryGib": 2.0 * cpu},
            "profile": {"points": points},
        })
    stage: dict[str, Any] = {"name": name}
    if depends_on:
        stage["dependsOn"] = Flow(depends_on)
    stage.update({
        "batchSizes": Flow(IPA_BATCHES),
        "bounds": {"minReplicas": 1, "maxReplicas": 100},
        "variants": variants,
    })
    stage_sla = IPA_SLA_FACTOR * sum(l1s) / len(l1s)
    return stage, stage_sla


def ipa_video(data: Path) -> str:
    acc = yaml.safe_load((data / "profiles" / "ipa-accuracies.yaml").read_text())["video"]
    detector, sla_detector = _ipa_stage("detector", YOLO_GFLOPS, acc["crop"], [])
    classifier, sla_classifier = _ipa_stage("classifier", RESNET_GFLOPS, acc["classification"], ["detector"])
    slo = round(sla_detector + sla_classifier)
    mean_detector, mean_classifier = sla_detector / IPA_SLA_FACTOR, sla_classifier / IPA_SLA_FACTOR
    spec = {
        "slo": {"latencyMs": slo, "percentile": 99},
        "objective": {"accuracy": 2.0, "cost": 1.0, "batch": 1.0e-6, "accuracyAggregation": "product"},
        "adaptation": {
            "intervalSeconds": 10,
            "predictor": {"kind": "lstm", "windowSeconds": 120, "headroom": 0.1},
        },
        "stages": [detector, classifier],
    }
    header = f"""
IPA's video pipeline (Ghafouri et al., JSys 2024): detector YOLOv5 n/s/m/l/x -> classifier ResNet-18..152.
GENERATED by manifests/examples/generate.py -- edit the script, not this file.

Accuracies: IPA data/configs/accuracies.yaml (pipeline `video`: `crop` mAP and `classification` top-1,
../shared/data/profiles/ipa-accuracies.yaml), divided by 100 (45.7 -> 0.457) because the objective
multiplies stage accuracies (accuracyAggregation: product, IPA's JSys revision).
Objective weights: IPA's video pipeline alpha = 2 (accuracy), beta = 1 (cost in cores),
gamma = 1e-6 (batch).

THE LATENCY PROFILES ARE SYNTHETIC. IPA's measured profiles are not public. They were derived as:
  batch-1 latency l1 = 10 ms + 6 ms per GFLOP per core (GFLOPs: YOLOv5 at 640 px from the ultralytics
  README, ResNet at 224 px from torchvision), with 1 core per replica (2 for yolov5x and resnet152);
  latency(b) = l1 * (0.6 + 0.4 b); throughput(b) = b * 1000 / latency(b).
Replace them with `paretoserve profile` measurements before drawing any conclusion.

SLO: IPA's rule -- a stage's SLA is {IPA_SLA_FACTOR} x its mean batch-1 latency over variants, the pipeline SLO
is the sum: {IPA_SLA_FACTOR} x {mean_detector:.2f} + {IPA_SLA_FACTOR} x {mean_classifier:.2f} = {slo} ms.
Control loop as in IPA: a decision every 10 s, LSTM over a 2-minute history, 1 <= replicas <= 100.
"""
    return render(header, _manifest("ipa-video", spec, {"paretoserve.io/example": "ipa"}))


# --------------------------------------------------------------------------------------------------
# InfAdapter: one ResNet stage, several variants at once (traffic split), CPU capacity profile
# --------------------------------------------------------------------------------------------------

# InfAdapter auto_tuner/starter.py (@bf9a789): accuracies (ImageNet top-1), load times in seconds.
INFADAPTER_ACCURACY = {18: 0.69758, 34: 0.73314, 50: 0.7613, 101: 0.77374, 152: 0.78312}
INFADAPTER_LOAD_TIME = {18: 6.44, 34: 6.79, 50: 6.82, 101: 7.77, 152: 8.52}
INFADAPTER_SLA = 750


def infadapter_resnet(data: Path) -> str:
    rows: dict[int, list[dict[str, str]]] = {}
    with (data / "profiles" / "infadapter-resnet-cpu-capacity.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if int(row["SLA"]) == INFADAPTER_SLA and int(row["BATCH"]) == 1:
                rows.setdefault(int(row["ARCH"]), []).append(row)
    variants = []
    missing_latency = []
    for arch in sorted(rows):
        points = []
        memory = {r["MEM"] for r in rows[arch]}
        for r in sorted(rows[arch], key=lambda r: int(r["CPU"])):
            capacity = float(r["capacity"])
            if capacity <= 0:
                continue
            if r["p99_latency"].strip():
                latency = float(r["p99_latency"])
            else:  # not recorded: the capacity is defined as p99 <= SLA, so the SLA bounds it
                latency = float(INFADAPTER_SLA)
                missing_latency.append(f"ResNet-{arch} at {r['CPU']} core(s)")
            points.append(FlowMap(batch=1, cpu=int(r["CPU"]), latencyMs=latency, throughputRps=capacity))
        (mem,) = memory
        variants.append({
            "name": f"resnet{arch}",
            "tritonModel": f"resnet{arch}",
            "accuracy": INFADAPTER_ACCURACY[arch],
            "loadTimeSeconds": INFADAPTER_LOAD_TIME[arch],
            "resources": {"cpu": 1, "memoryGib": float(mem.rstrip("G"))},
            "profile": {"points": points},
        })
    spec = {
        "slo": {"latencyMs": INFADAPTER_SLA, "percentile": 99},
        "objective": {
            "accuracy": 1.0,
            "cost": 0.05,
            "reconfiguration": 0.001,
            "accuracyAggregation": "sum",
            "normalizeCost": True,
        },
        "budget": {"cpu": 20},
        "adaptation": {
            "intervalSeconds": 30,
            "targetUtilization": 0.8,
            "scaleDownStabilization": 4,
            "predictor": {"kind": "lstm", "windowSeconds": 600, "headroom": 0.1},
        },
        "stages": [{
            "name": "classifier",
            "multiVariant": True,
            "batchSizes": Flow([1]),
            "variants": variants,
        }],
    }
    header = f"""
InfAdapter (Salmani et al., EuroMLSys '23): ImageNet classification with ResNet-18/34/50/101/152 served
side by side with a traffic split (multiVariant), under a 20-core budget and a 750 ms p99 SLO.
GENERATED by manifests/examples/generate.py -- edit the script, not this file.

Profile points: InfAdapter's measured capacity table (auto_tuner/adapter/capacity_result_Feb_21.csv,
../shared/data/profiles/infadapter-resnet-cpu-capacity.csv), rows with SLA = {INFADAPTER_SLA} ms and batch 1:
one point per (ARCH, CPU) with cpu = CPU, latencyMs = p99_latency, throughputRps = capacity (the highest
load whose p99 stayed within the SLA); rows with capacity 0 are skipped. Where p99_latency was not
recorded ({"; ".join(missing_latency) or "none"})
latencyMs is the SLA, which bounds it by definition.
Memory per replica is the MEM column (GB, written as GiB). Accuracies and load times: InfAdapter
auto_tuner/starter.py. Objective: InfAdapter's alpha = 0.05 on cores / C_max (normalizeCost with
budget.cpu = C_max = 20) and beta = 0.001 on loading cost; accuracy is the traffic-weighted sum.
Control loop: a decision every 30 s, kappa = 0.8 (targetUtilization), scale-down after 4 lower plans,
LSTM over the last 10 one-minute maxima (600 s) with 10% headroom.
"""
    return render(header, _manifest("infadapter-resnet", spec, {"paretoserve.io/example": "infadapter"}))


# --------------------------------------------------------------------------------------------------
# DiffServe: SD-Turbo -> SD-v1.5 cascade with a discriminator
# --------------------------------------------------------------------------------------------------

DIFFSERVE_ACCEL = "onnxruntime_gpu_ampere"
DIFFSERVE_BATCHES = [1, 2, 4, 8, 16, 32]
# DiffServe plotting/plot_results.py: FID of cascade 1 against the share of queries on the light model.
FID_VS_LIGHT_SHARE = [(0.0, 18.55), (0.4, 16.79), (1.0, 22.77)]


def fid_at(light_share: float) -> float:
    """Piecewise-linear interpolation of DiffServe's FID-vs-light-share curve."""
    for (x0, y0), (x1, y1) in zip(FID_VS_LIGHT_SHARE, FID_VS_LIGHT_SHARE[1:], strict=False):
        if x0 <= light_share <= x1:
            return y0 + (y1 - y0) * (light_share - x0) / (x1 - x0)
    raise ValueError(f"light share {light_share} outside [0, 1]")


def diffserve_cascade(data: Path) -> str:
    latency: dict[str, dict[int, float]] = {}
    with (data / "diffserve" / "profiling" / "stable_diffusion_runtimes_sdturbo.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["Accel"] == DIFFSERVE_ACCEL and int(row["batchsize"]) in DIFFSERVE_BATCHES:
                latency.setdefault(row["Model"], {})[int(row["batchsize"])] = float(row["95th_pct"])
    rows = []
    with (data / "diffserve" / "traces" / "apps" / "sdturbo_sdv15" / "f_t_sdturbo_sdv15.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            t, f_t = float(row["t"]), float(row["f_t"])
            rows.append(FlowMap(threshold=t, heavyFraction=f_t, quality=round(-fid_at(1.0 - f_t), 4)))

    def variant(name: str, accuracy: float) -> dict[str, Any]:
        points = [FlowMap(batch=b, latencyMs=latency[name][b]) for b in DIFFSERVE_BATCHES]
        return {
            "name": name,
            "tritonModel": name,
            "accuracy": accuracy,
            "resources": {"cpu": 4, "memoryGib": 32, "gpus": {"nvidia.com/gpu": 1}},
            "profile": {"points": points},
        }

    spec = {
        "slo": {"latencyMs": 5000, "percentile": 99},
        "objective": {
            "accuracy": 1.0,
            "cost": 0.001,
            "accuracyAggregation": "sum",
            "prices": {"cpu": 0.0, "nvidia.com/gpu": 1.0},
        },
        "budget": {"gpus": {"nvidia.com/gpu": 15}},
        "adaptation": {
            "intervalSeconds": 1,
            "solverTimeLimitSeconds": 0.5,
            "predictor": {"kind": "ewma", "windowSeconds": 20, "headroom": 0.2},
        },
        "stages": [{
            "name": "generate",
            "batchSizes": Flow(DIFFSERVE_BATCHES),
            "variants": [
                variant("sdturbo", -round(fid_at(1.0), 4)),
                variant("sdv15", -round(fid_at(0.0), 4)),
            ],
            "cascade": {
                "light": "sdturbo",
                "heavy": "sdv15",
                "router": "discriminator",
                "discriminatorModel": "efficientnet-v2-s-discriminator",
                "threshold": "auto",
                "rows": rows,
            },
        }],
    }
    header = f"""
DiffServe (Ahmad et al., MLSys 2025) cascade 1: every prompt runs on SD-Turbo; a discriminator defers
the images it scores below the threshold t to SD-v1.5. The planner picks t, batch sizes and GPUs per model.
GENERATED by manifests/examples/generate.py -- edit the script, not this file.

Profiles: DiffServe profiling/stable_diffusion_runtimes_sdturbo.csv (../shared/data/diffserve/profiling/),
rows with Accel = {DIFFSERVE_ACCEL}, batch sizes {DIFFSERVE_BATCHES}, latencyMs = 95th_pct
(all percentile columns are equal in the file); both models' rows are in that file.
One GPU and 4 cores per replica.
Cascade rows: f(t) from traces/apps/sdturbo_sdv15/f_t_sdturbo_sdv15.csv -- threshold = t,
heavyFraction = f(t). QUALITY IS DERIVED, not measured per row: DiffServe's offline FID-vs-light-share
curve for this cascade (0% light -> FID 18.55, 40% -> 16.79, 100% -> 22.77; plotting/plot_results.py),
interpolated piecewise-linearly at light share 1 - f(t); quality = -FID so that higher is better.
The variants' accuracies are the curve's end points (all-light -22.77, all-heavy -18.55).
Because quality is not in [0, 1], the objective sums it (accuracyAggregation: sum); GPUs are priced
1 with a tiny cost weight, so quality dominates and cost only breaks ties.
Budget: 15 GPUs -- DiffServe's 16 workers minus the one it reserves for the sink. SLO 5 s
(traces/apps/sdturbo_sdv15/sdturbo_sdv15.json). Control loop as in DiffServe: every 1 s, EWMA of demand
(window 20) x 1.2; the solver gets 0.5 s so that a solve fits inside the 1 s interval.
"""
    return render(header, _manifest("diffserve-cascade", spec, {"paretoserve.io/example": "diffserve"}))


GENERATORS: dict[str, Callable[[Path], str]] = {
    "ipa-video.yaml": ipa_video,
    "infadapter-resnet.yaml": infadapter_resnet,
    "diffserve-cascade.yaml": diffserve_cascade,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed files are current")
    parser.add_argument("--data", type=Path, default=DATA, help=f"reference data folder (default {DATA})")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"reference data not found at {args.data}", file=sys.stderr)
        return 2
    stale = []
    for filename, generate in GENERATORS.items():
        text = generate(args.data)
        target = HERE / filename
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(filename)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(REPO_ROOT)}")
    if stale:
        print("stale (run generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
