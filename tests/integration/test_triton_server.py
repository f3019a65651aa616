"""The variants served by the real Triton server behave like the offline torch models, and can be
reconfigured at run time without dropping a request.

Covers: predictions and probabilities equal the offline torch model's; held-out accuracy through
Triton equals the cached metadata; instance count 1 -> 2 -> 1 under a continuous request stream with
zero failures; dynamic batching and queue policy changed through the load API's config override;
unload and reload; the metrics endpoint counting inferences; a broken model failing start-up with
the log named in the error.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from paretoserve.workers.models import ModelCatalog, load_split, load_variant, predict
from paretoserve.workers.models.training import DigitsSplit
from paretoserve.workers.triton.control import TritonControl
from paretoserve.workers.triton.repository import QueuePolicy, TritonModelSpec, write_repository
from paretoserve.workers.triton.server import (
    TritonInstallation,
    TritonPorts,
    TritonServer,
    TritonServerConfig,
    TritonStartupError,
)

from .conftest import SERVED_VARIANTS

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_split()


def _infer_all(
    control: TritonControl, model: str, images: np.ndarray, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confidences for ``images``, sent in requests of at most ``batch`` images."""
    outputs = [control.infer(model, images[start : start + batch]) for start in range(0, len(images), batch)]
    return np.concatenate([o.label for o in outputs]), np.concatenate([o.confidence for o in outputs])


@pytest.mark.parametrize("variant", SERVED_VARIANTS)
def test_triton_outputs_equal_offline_torch(
    variant: str, control: TritonControl, catalog: ModelCatalog, split: DigitsSplit
) -> None:
    images = split.x_test[:32]
    offline = predict(load_variant(catalog.variant_dir(variant)), images)

    served = control.infer(variant, images)

    np.testing.assert_array_equal(served.label, offline.label)
    np.testing.assert_allclose(served.probs, offline.probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(served.confidence, served.probs.max(axis=1))
    np.testing.assert_allclose(served.probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("variant", SERVED_VARIANTS)
def test_heldout_accuracy_through_triton_equals_cached_metadata(
    variant: str, control: TritonControl, catalog: ModelCatalog, split: DigitsSplit
) -> None:
    labels, _ = _infer_all(control, variant, split.x_test)

    correct = int((labels == split.y_test).sum())

    assert (correct, len(labels)) == (catalog[variant].heldout_correct, catalog[variant].heldout_size)
    assert correct / len(labels) == catalog[variant].heldout_accuracy


def test_variants_differ_in_accuracy_and_confidence_tracks_correctness(
    control: TritonControl, split: DigitsSplit
) -> None:
    light_labels, light_confidence = _infer_all(control, "tiny_linear", split.x_test)
    heavy_labels, _ = _infer_all(control, "cnn_large", split.x_test)
    light_right = light_labels == split.y_test

    assert (heavy_labels == split.y_test).mean() > light_right.mean()
    # the cascade signal: the light model is more confident where it is right
    assert light_confidence[light_right].mean() > light_confidence[~light_right].mean() + 0.1


@dataclass
class RequestStream:
    """Background requests to one model; each thread owns its client (tritonclient is not thread-safe)."""

    url: str
    model: str
    images: np.ndarray
    expected: np.ndarray
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    wrong: int = 0
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        with TritonControl(self.url, request_timeout_s=60.0) as client:
            while not self.stop.is_set():
                start = self.sent % (len(self.images) - 4)
                size = 1 + self.sent % 4
                try:
                    labels = client.infer(self.model, self.images[start : start + size]).label
                    self.wrong += int((labels != self.expected[start : start + size]).sum())
                except Exception as error:  # every failure is recorded and fails the test
                    self.failures.append(f"{type(error).__name__}: {error}")
                self.sent += 1


@pytest.fixture()
def start_stream(
    triton_server: TritonServer, catalog: ModelCatalog, split: DigitsSplit
) -> Iterator[Callable[[str], RequestStream]]:
    """Starts a background request stream to a model; every stream is stopped and joined after the test."""
    running: list[tuple[RequestStream, threading.Thread]] = []

    def start(model: str) -> RequestStream:
        expected = predict(load_variant(catalog.variant_dir(model)), split.x_test).label
        requests = RequestStream(triton_server.http_url, model, split.x_test, expected)
        thread = threading.Thread(target=requests.run, name=f"request-stream-{model}", daemon=True)
        thread.start()
        running.append((requests, thread))
        time.sleep(0.5)  # let it get going
        return requests

    yield start
    for requests, thread in running:
        requests.stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()


def _instance_count(control: TritonControl, model: str) -> int:
    return sum(int(group["count"]) for group in control.model_config(model)["instance_group"])


def test_instance_count_changes_under_load_without_failed_requests(
    control: TritonControl, start_stream: Callable[[str], RequestStream]
) -> None:
    assert _instance_count(control, "cnn_large") == 1
    stream = start_stream("cnn_large")
    sent_before = stream.sent

    scaled_up = control.set_instance_count("cnn_large", 2)
    sent_at_two = stream.sent
    assert _instance_count(control, "cnn_large") == 2
    assert scaled_up["instance_group"][0]["count"] == 2

    control.set_instance_count("cnn_large", 1)
    assert _instance_count(control, "cnn_large") == 1
    time.sleep(0.5)
    stream.stop.set()

    assert stream.failures == []
    assert stream.wrong == 0
    assert sent_at_two > sent_before and stream.sent > sent_at_two  # requests flowed during both changes


def test_dynamic_batching_reconfigured_under_load_without_failed_requests(
    control: TritonControl,
    served_specs: dict[str, TritonModelSpec],
    start_stream: Callable[[str], RequestStream],
) -> None:
    stream = start_stream("cnn_small")
    try:
        config = control.set_dynamic_batching("cnn_small", preferred_batch_sizes=[4, 8], max_queue_delay_us=3000)

        assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 3000
    finally:
        control.apply_spec(served_specs["cnn_small"])
    restored = control.model_config("cnn_small")["dynamic_batching"]
    assert int(restored["max_queue_delay_microseconds"]) == 200
    sent = stream.sent
    time.sleep(0.3)
    stream.stop.set()

    assert stream.failures == []
    assert stream.wrong == 0
    assert stream.sent > sent > 0


def test_queue_policy_from_the_spec_rejects_timed_out_requests(
    control: TritonControl, served_specs: dict[str, TritonModelSpec], split: DigitsSplit
) -> None:
    spec = served_specs["tiny_linear"]
    strict = replace(spec, max_queue_delay_us=50_000, queue_policy=QueuePolicy(timeout_us=1, timeout_action="REJECT"))
    before = control.metrics()["tiny_linear"]
    try:
        control.apply_spec(strict)
        with pytest.raises(InferenceServerException):
            control.infer("tiny_linear", split.x_test[:1])
    finally:
        control.apply_spec(spec)

    assert control.metrics()["tiny_linear"].since(before).request_failure == 1
    assert control.infer("tiny_linear", split.x_test[:2]).label.shape == (2,)


def test_unload_then_load_again(control: TritonControl, split: DigitsSplit) -> None:
    control.unload_model("cnn_small")
    assert not control.is_model_ready("cnn_small")
    with pytest.raises(InferenceServerException):
        control.infer("cnn_small", split.x_test[:1])

    control.load_model("cnn_small")

    assert control.is_model_ready("cnn_small")
    assert control.infer("cnn_small", split.x_test[:2]).label.shape == (2,)


def test_metrics_count_inferences(control: TritonControl, split: DigitsSplit) -> None:
    before = control.metrics()["tiny_linear"]

    for _ in range(5):
        control.infer("tiny_linear", split.x_test[:3])
    # Triton may count a request's success just after its answer is out (seen once in CI: 4 of 5): read the
    # counters until they have all five, within a bound, then check every one exactly
    deadline = time.monotonic() + 10.0
    while True:
        after = control.metrics()["tiny_linear"]
        delta = after.since(before)
        if delta.request_success >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert delta.inference_count == 15
    assert delta.request_success == 5
    assert 1 <= delta.exec_count <= 5
    assert delta.compute_infer_duration_us > 0
    assert after.pending_requests == 0


def test_broken_model_fails_startup_naming_the_log(
    tmp_path: Path, triton_installation: TritonInstallation, served_specs: dict[str, TritonModelSpec]
) -> None:
    broken = replace(served_specs["tiny_linear"], name="broken", weights_dir=str(tmp_path / "missing"))
    repository = write_repository(tmp_path / "repository", [broken])
    config = TritonServerConfig(
        model_repository=repository,
        models=("broken",),
        work_dir=tmp_path / "work",
        backend_cache_dir=tmp_path / "backends",
        startup_timeout_s=120,
    )
    server = TritonServer(config, triton_installation)

    with pytest.raises(TritonStartupError) as raised:
        server.start()

    assert str(tmp_path / "work" / "tritonserver.log") in str(raised.value)
    assert "no ONNX graph at" in str(raised.value)  # the backend's own error, quoted from the log
    assert not server.is_running()


def test_port_taken_at_start_is_retried_on_fresh_ports(
    tmp_path: Path, triton_installation: TritonInstallation, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real_pick = TritonPorts.pick_free
    first = replace(real_pick(), http=taken.getsockname()[1])
    picks = iter([first])
    monkeypatch.setattr(TritonPorts, "pick_free", staticmethod(lambda host="127.0.0.1": next(picks, real_pick(host))))
    config = TritonServerConfig(
        model_repository=write_repository(tmp_path / "empty", []),
        work_dir=tmp_path / "work",
        backend_cache_dir=tmp_path / "backends",
    )

    try:
        with TritonServer(config, triton_installation) as server:
            assert server.ports.http != first.http
            assert "=== attempt 2" in server.log_path.read_text()
    finally:
        taken.close()
    assert not server.is_running()


def _alive(pid: int) -> bool:
    """Running, not a zombie left for a PID 1 that does not reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_triton_stops_when_its_parent_is_killed(tmp_path: Path, triton_installation: TritonInstallation) -> None:
    """`kill -9` of `paretoserve up` must not leave a tritonserver holding ports and memory."""
    script = f"""
import sys, time
from pathlib import Path
from paretoserve.workers.triton.repository import write_repository
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig
root = Path({str(tmp_path)!r})
config = TritonServerConfig(model_repository=write_repository(root / "empty", []), work_dir=root / "work",
                            backend_cache_dir=root / "backends")
server = TritonServer(config)
server.start()
print(server.pid, flush=True)
time.sleep(600)
"""
    parent = subprocess.Popen([sys.executable, "-I", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 120)
        assert ready, "the parent did not start Triton within 120 s"
        triton_pid = int(parent.stdout.readline())
        assert _alive(triton_pid)
    finally:
        parent.kill()
        parent.wait(timeout=30)
    deadline = time.monotonic() + 60
    while _alive(triton_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(triton_pid), f"tritonserver {triton_pid} outlived its killed parent"
