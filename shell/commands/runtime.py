"""`paretoserve profile | up | load`: the one-machine runtime on the command line.

- ``profile FILE --out PROFILE.yaml``: measure the pipeline's variants through the real Triton and write
  profile points (``--write-pipeline OUT.yaml`` also writes the manifest with them in place);
- ``up FILE``: serve the pipeline with Triton, the router and the control loop until Ctrl-C, or with
  ``--replay TRACE --window A:B --scale X`` replay a trace window against it, print the summary and exit;
- ``load --trace … --window … --scale …``: replay a trace against a running ``up``.

A pipeline that generates tokens is replayed with streamed OpenAI completions of held-out arithmetic prompts
naming the pipeline (``workers/runtime/completions.py``); any other with the held-out digits.

Heavy imports (torch, tritonclient, httpx, matplotlib) happen inside the command functions so the rest of
the CLI stays fast. Bad input is one line naming the argument or manifest field, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from paretoserve.shell.errors import CliError
from paretoserve.shell.manifests import read_manifest

DEFAULT_TRACE_HINT = "../shared/data/traces/twitter-2018-04-workload.tbz2"


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CliError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise CliError(f"{flag}: expected positive integers, got {text!r}")
    return values


def _cores(flag: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CliError(f"{flag}: expected comma-separated numbers of cores, got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise CliError(f"{flag}: expected positive numbers of cores, got {text!r}")
    return values


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cmd_profile(args: argparse.Namespace) -> int:
    pipeline, raw = read_manifest(args.file)
    from paretoserve.planner.spec import SpecError
    from paretoserve.workers.runtime.profiler import (
        ProfileGrid,
        dump_yaml,
        kept_comments,
        pipeline_document,
        profile_document,
        profile_pipeline,
    )
    from paretoserve.workers.triton.cpu_quota import CpuQuotaUnavailable

    batches, threads = _ints("--batches", args.batches), _ints("--threads", args.threads)
    instances = _ints("--instances", args.instances)
    quotas = _cores("--cpu-quotas", args.cpu_quotas) if args.cpu_quotas else ()
    options = {"batches": batches, "threads": threads, "instances": instances, "cpu_quotas": quotas,
               "cpu_period_us": round(1000 * args.cpu_period_ms)}
    try:
        grid = ProfileGrid.quick(**options) if args.quick else ProfileGrid(**options)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="paretoserve-profile-"))
    command = "paretoserve profile " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["profile"] else "paretoserve profile"
    try:
        result = profile_pipeline(pipeline, grid, work_dir, progress=_log,
                                  model_repository=Path(args.model_repository) if args.model_repository else None)
    except SpecError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    except CpuQuotaUnavailable as exc:
        raise CliError(f"--cpu-quotas: {exc}") from None
    header = (f"Measured by `{command}`\non this machine ({grid.cores} dedicated cores, load average "
              f"{result.machine['loadAverageAtStart']}) at {time.strftime('%Y-%m-%d %H:%M')}; latencyMs is p"
              f"{result.percentile} of sequential requests, throughputRps images/s of a closed loop.")
    Path(args.out).write_text(dump_yaml(profile_document(pipeline, result), header))
    _log(f"wrote {args.out}")
    if args.write_pipeline:
        document = pipeline_document(raw, result)
        description = kept_comments(Path(args.file).read_text(encoding="utf-8"))
        Path(args.write_pipeline).write_text(dump_yaml(document, header + ("\n" + description if description else "")))
        _log(f"wrote {args.write_pipeline}")
    return 0


def _replay_args(args: argparse.Namespace, trace: str | None, flag: str) -> Any:
    from paretoserve.workers.runtime.replay import prepare_replay
    from paretoserve.workers.runtime.trace import TraceError

    if trace is None:
        for name in ("window", "scale"):
            if getattr(args, name) is not None:
                raise CliError(f"--{name}: only used with {flag} TRACE")
        return None
    for name in ("window", "scale"):
        if getattr(args, name) is None:
            raise CliError(f"--{name}: required with {flag}")
    try:
        return prepare_replay(Path(trace), args.window, args.scale, seed=args.seed, flag=flag)
    except TraceError as exc:
        raise CliError(str(exc)) from None


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise CliError(f"--port: must be in 1..65535, got {port}")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise CliError(f"--port: 127.0.0.1:{port} is already in use") from None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_up(args: argparse.Namespace) -> int:
    pipeline, _ = read_manifest(args.file)
    for flag, value in (("--cores", args.cores), ("--max-instances", args.max_instances),
                        ("--router-concurrency", args.router_concurrency)):
        if value is not None and value < 1:
            raise CliError(f"{flag}: must be >= 1, got {value}")
    replay = _replay_args(args, args.replay, "--replay")
    _check_port(args.port)
    import threading

    from paretoserve.planner.spec import SpecError
    from paretoserve.workers.runtime.completions import generation_slo
    from paretoserve.workers.runtime.local import LocalRuntime, UpSettings
    from paretoserve.workers.runtime.replay import Target, replayable, run_and_report
    from paretoserve.workers.solver_banner import silence_solver_banner

    silence_solver_banner()
    settings = UpSettings(port=args.port, prometheus=args.prometheus, work_dir=Path(args.work_dir) if args.work_dir
                          else None, **({"cores": args.cores} if args.cores else {}),
                          max_instances_per_model=args.max_instances, cpu_quota=not args.no_cpu_quota,
                          model_repository=Path(args.model_repository) if args.model_repository else None,
                          queue_order=args.queue_order, router_concurrency=args.router_concurrency)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    try:
        with LocalRuntime(pipeline, settings, log=_log) as runtime:
            if replay is None:
                runtime.wait(threading.Event())
                return 0
            startup_s = time.monotonic() - started
            refusal = replayable(pipeline, runtime.model_specs)
            if refusal is not None:
                raise CliError(f"--replay: {refusal}")
            spec = pipeline.spec
            target = Target(runtime.url, pipeline.metadata.name, spec.slo.latency_ms, int(spec.slo.percentile.value),
                            spec.slo.dynamic.header if spec.slo.dynamic else None,
                            f"{runtime.router_admin_url}/metrics" if runtime.router_admin_url else None,
                            generation_slo(pipeline, runtime.model_specs))
            summary = run_and_report(target, replay, events=lambda: runtime.events, steps=lambda: runtime.steps,
                                     out_dir=Path(args.out) if args.out else None, progress=not args.no_progress)
    except KeyboardInterrupt:
        _log("stopped")
        return 0
    except SpecError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    except (RuntimeError, OSError) as exc:
        print(f"paretoserve: up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary["wallSeconds"] = round(time.monotonic() - started, 1)
    summary["startupSeconds"] = round(startup_s, 1)
    if args.out:
        (Path(args.out) / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "text"},
                                                                indent=2))
    _print_summary(summary, args.json)
    return 0


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    from paretoserve.workers.runtime.report import format_summary

    summary.pop("text", None)
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary))


def cmd_load(args: argparse.Namespace) -> int:
    replay = _replay_args(args, args.trace, "--trace")
    from paretoserve.workers.runtime.local import default_state_dir, read_state
    from paretoserve.workers.runtime.replay import Target, run_and_report

    try:
        parts = urlsplit(args.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        parts, port = None, 0
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--url: expected a base URL like http://127.0.0.1:8080, got {args.url!r}")
    state_dir = Path(args.state) if args.state else default_state_dir(port)
    info: dict[str, Any] = {}
    if (state_dir / "runtime.json").exists():
        info, _, _ = read_state(state_dir)
    pipeline = args.pipeline or info.get("pipeline")
    slo_ms = args.slo_ms or info.get("sloMs")
    if pipeline is None or slo_ms is None:
        raise CliError(f"--pipeline/--slo-ms: no `paretoserve up` state in {state_dir}; pass them (or --state DIR)")
    if float(slo_ms) <= 0:
        raise CliError(f"--slo-ms: must be > 0, got {slo_ms}")
    import httpx

    try:
        httpx.get(f"{args.url.rstrip('/')}/v2/health/ready", timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise CliError(f"--url: no ready router at {args.url} ({type(exc).__name__}); start `paretoserve up`") from None
    generation = info.get("generation")
    if args.completions and generation is None:
        generation = {"stage": None, "ttftMs": None, "itlMs": None}  # no `up` state: no stage SLOs to check
    target = Target(args.url, str(pipeline), float(slo_ms), int(info.get("percentile", 99)),
                    info.get("deadlineHeader"), info.get("routerMetricsUrl"), generation)

    def events() -> list[Any]:
        return read_state(state_dir)[1] if (state_dir / "runtime.json").exists() else []

    def steps() -> list[Any]:
        return read_state(state_dir)[2] if (state_dir / "runtime.json").exists() else []

    summary = run_and_report(target, replay, events=events, steps=steps,
                             out_dir=Path(args.out) if args.out else None, progress=not args.no_progress)
    _print_summary(summary, args.json)
    return 0


def _add_replay_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", help="START:END seconds of the trace")
    parser.add_argument("--scale", type=float, help="multiply the trace's requests/s by this")
    parser.add_argument("--seed", type=int, default=0, help="phase of the arrivals within each second")
    parser.add_argument("--out", help="directory for summary.json, requests.jsonl and PNG plots")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def register(sub: Any) -> None:
    profile = sub.add_parser("profile", help="measure variants through the real Triton, write profile points")
    profile.add_argument("file", help="ServingPipeline YAML")
    profile.add_argument("--out", required=True, help="profile YAML to write")
    profile.add_argument("--write-pipeline", help="also write the manifest with the measured profiles")
    profile.add_argument("--batches", default="1,2,4,8,16")
    profile.add_argument("--threads", default="1,2", help="CPU threads per instance")
    profile.add_argument("--instances", default="1,2", help="Triton instances per replica")
    profile.add_argument("--cpu-quotas", help="CPU limits in cores (e.g. 0.25,0.5,1): measure Triton under each "
                         "CFS quota, as a pod with that limit (needs root or a delegated cgroup)")
    profile.add_argument("--cpu-period-ms", type=float, default=100.0,
                         help="CFS period of those quotas: 100 as the kubelet sets for pods, 10 as 'up' enforces")
    profile.add_argument("--quick", action="store_true", help="fewer samples (noisier tails)")
    profile.add_argument("--work-dir", help="model repository and Triton log (default: a temp dir)")
    profile.add_argument("--model-repository", help="models the pipeline names that are not digits variants, e.g. "
                                                    "the repository/ written by `paretoserve agents build`")
    profile.set_defaults(func=cmd_profile)

    up = sub.add_parser("up", help="serve a pipeline locally: Triton + router + control loop")
    up.add_argument("file", help="ServingPipeline YAML")
    up.add_argument("--port", type=int, default=8080, help="router port on 127.0.0.1")
    up.add_argument("--prometheus", help="read observations from this Prometheus URL")
    up.add_argument("--replay", help=f"trace to replay, then exit with a summary (e.g. {DEFAULT_TRACE_HINT})")
    up.add_argument("--cores", type=int, help="cores for Triton instances (default: the affinity mask)")
    up.add_argument("--max-instances", type=int, help="Triton instances per model at most (default: cores)")
    up.add_argument("--no-cpu-quota", action="store_true",
                    help="let Triton use every core (default: a CFS quota equal to the plan's cores, where root)")
    up.add_argument("--work-dir", help="model repository and logs (default: a temp dir)")
    up.add_argument("--model-repository", help="models the pipeline names that are not digits variants, e.g. "
                                               "the repository/ written by `paretoserve fuse`")
    up.add_argument("--queue-order", choices=("slack", "deadline", "fifo"), default="slack",
                    help="order of the router's queued upstream calls: least slack (the request's deadline minus the "
                         "planned path ahead of the stage), deadline, or arrival")
    up.add_argument("--router-concurrency", type=int,
                    help="upstream calls the router runs at once (default 64); near the Triton instances, the router's "
                         "queue decides which call runs next")
    _add_replay_flags(up)
    up.set_defaults(func=cmd_up)

    load = sub.add_parser("load", help="replay a per-second trace against a running `paretoserve up`")
    load.add_argument("--trace", required=True, help=f"bz2 tarball of per-second counts ({DEFAULT_TRACE_HINT})")
    load.add_argument("--url", default="http://127.0.0.1:8080", help="the router of a running `up`")
    load.add_argument("--state", help="state directory of that `up` (default: from the URL's port)")
    load.add_argument("--pipeline", help="pipeline name (default: from the `up` state)")
    load.add_argument("--slo-ms", type=float, help="latency SLO (default: from the `up` state)")
    load.add_argument("--completions", action="store_true",
                      help="send streamed /v1/completions of held-out arithmetic prompts naming the pipeline (default: "
                           "when the `up` state says the pipeline generates tokens)")
    _add_replay_flags(load)
    load.set_defaults(func=cmd_load)
