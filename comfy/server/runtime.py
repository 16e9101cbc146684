"""What lives for the whole worker: settings, the ComfyUI process, client and event stream."""

from __future__ import annotations

import logging
import time

from comfy.deadline import Deadline
from comfy.server.client import PROBE_TIMEOUT_S, ComfyClient
from comfy.errors import ComfyUnavailable, ComfyUnresponsive
from comfy.nodes.provision import CustomNodeSet
from comfy.server.events import ComfyEvents
from comfy.server.monitor import PromptMonitor
from comfy.server.pipeline import JobPipeline
from comfy.server.process import ComfyProcess, ComfyStartError
from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.server.runtime")


class WorkerRuntime:
    """One per worker process. Jobs take turns at ComfyUI through its `pipeline`."""

    def __init__(self, settings: WorkerSettings, process: ComfyProcess | None = None,
                 custom_nodes: CustomNodeSet | None = None) -> None:
        self.settings = settings
        self.process = process
        self.custom_nodes = custom_nodes  # installed from CUSTOM_NODES at boot, if set
        self._reported_imports: set[tuple[int | None, str]] = set()  # (ComfyUI pid, node) already logged
        self.client = ComfyClient(settings.base_url)
        self.events = ComfyEvents(self.client.ws_url)
        self.monitor = PromptMonitor(self.client, self.events, self.comfy_alive, self.describe_death)
        self.pipeline = JobPipeline(settings.job_concurrency)  # ComfyUI's one slot, and the jobs around it

    @classmethod
    def boot(cls, settings: WorkerSettings, process: ComfyProcess | None = None) -> "WorkerRuntime":
        """Start ComfyUI (unless attaching) and return at once; jobs wait for readiness."""
        if process is None and not settings.attach_mode:
            process = ComfyProcess(settings)
            process.start()
        return cls(settings, process)

    def comfy_alive(self) -> bool:
        return self.process is None or self.process.is_alive()

    def comfy_ready(self) -> bool:
        """Started and answered since (an owned one); an attached one is taken to be."""
        return self.process is None or self.process.ready

    def describe_death(self) -> str:
        if self.process is None:
            return f"ComfyUI at {self.settings.base_url} stopped answering"
        code = self.process.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return f"ComfyUI {how} while running the job. Last lines of its log:\n{self.process.log_tail(10)}"

    def ensure_ready(self, deadline: Deadline | None = None) -> float:
        """Make sure ComfyUI is up and answering, and the websocket open; return the seconds
        spent waiting for ComfyUI to boot (a cold start, which the job's deadline leaves out).

        An owned ComfyUI that died is restarted; one that is running but does not answer a
        probe within PROBE_TIMEOUT_S (hung, deadlocked, SIGSTOPped) is killed and restarted.
        In attach mode a silent ComfyUI fails the job with ComfyUnresponsive.
        """
        booted_s = 0.0
        if self.process is not None:
            started = time.monotonic()
            if self.process.ready:
                try:
                    self.client.probe(within_deadline=False)
                except ComfyUnresponsive as exc:
                    self.restart_comfy(f"it did not answer before the job ({exc.message})")
                except ComfyUnavailable:
                    pass  # not listening any more: it is dying, and is restarted below
            booting = not self.process.ready
            if self.process.pid is not None and not self.process.is_alive():
                self.client.forget_object_info()
                self.events.close()
            try:
                self.process.ensure_running()
            except ComfyStartError as exc:
                raise ComfyUnavailable(str(exc)) from exc
            if booting:
                booted_s = time.monotonic() - started
        else:
            self.client.probe()  # raises ComfyUnavailable with the reason, ComfyUnresponsive when silent
        if not self.events.connected and not self.events.connect(
            timeout_s=5.0 if deadline is None else max(deadline.bound(5.0), 0.001)
        ):
            log.warning("websocket to ComfyUI could not be opened; following /history instead")
        self._report_custom_node_imports()
        return booted_s

    def _report_custom_node_imports(self) -> None:
        """Name each CUSTOM_NODES node ComfyUI could not import, once per ComfyUI process.

        Checked before every job: ComfyUI's log lines may reach us a moment after it answers.
        """
        if self.custom_nodes is None or self.process is None:
            return
        for failure in self.custom_nodes.import_failures(dict(self.process.custom_node_import_errors)):
            if (self.process.pid, failure.name) not in self._reported_imports:
                self._reported_imports.add((self.process.pid, failure.name))
                log.error("%s", failure.describe())

    def explain_unknown_class(self, class_type: str) -> str | None:
        """Why a node class may be missing: a CUSTOM_NODES node that failed to install or import."""
        if self.custom_nodes is None:
            return None
        errors = dict(self.process.custom_node_import_errors) if self.process is not None else {}
        return self.custom_nodes.explain(class_type, errors)

    def restart_comfy(self, reason: str) -> None:
        """Kill the owned ComfyUI and start a new one (it boots while the job's result goes back)."""
        if self.process is None:
            return
        log.error("restarting ComfyUI: %s", reason)
        self.process.kill()
        self.client.forget_object_info()
        self.events.close()
        try:
            self.process.start()
        except ComfyStartError as exc:  # the next job retries, and reports it
            log.error("%s", exc)

    def shutdown(self) -> None:
        self.events.close()
        self.client.close()
        if self.process is not None:
            self.process.stop()
