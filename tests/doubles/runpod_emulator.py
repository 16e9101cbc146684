"""A RunPod serverless emulator for tests: the public endpoint API and the worker protocol.

Public API (what a client such as the dispatcher calls), as documented in
shared/notes/runpod.md:
    POST /v2/{endpoint}/run        {"input", "webhook"?, "policy"?} -> {"id", "status": "IN_QUEUE"}
    GET  /v2/{endpoint}/status/{id}  -> {"id", "status", "delayTime", "executionTime", "output"?, "error"?}
                                        404 once the result expired (ttl / retention)
    POST /v2/{endpoint}/cancel/{id}
    GET  /v2/{endpoint}/health
  Bearer API key required; webhook POSTed when a job ends COMPLETED or FAILED (the
  /status body plus `input`), retried 2 more times on non-200.

Faults, injected on demand (test controls below): 429 on /run (the next N calls, or the
calls of one task, with Retry-After); random 429, 500 before making the job, and 500
AFTER making it (RunPod took the job but the caller cannot know: the dangerous case);
/run answers held back after the job was made (a fast job can finish first); webhooks
lost entirely (a share of them, never delivered).

Worker protocol (what the runpod SDK inside handler.py calls), per endpoint:
    GET  /{endpoint}/job-take/{worker}?...&job_in_progress=0|1  -> 200 job JSON | 204 (long poll)
    GET  /{endpoint}/job-take-batch/{worker}?...&batch_size=N   -> 200 [jobs] | 204
    GET  /{endpoint}/job-stop/{worker}?...                       -> {"jobsToStop": [...]}
    POST /{endpoint}/job-done/{worker}/{job}?...&isStream=false  body {"output"} | {"error"} |
                                                                 {"status": "IN_PROGRESS", "output"}
`worker_env(endpoint)` gives the RUNPOD_* variables that point a real worker at it.

To add routes (e.g. RunPod's management API for an endpoint scaler), subclass and
override `extra_routes()`; handlers may use `self.lock` and the state below.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

MAX_RUN_BODY = 10 * 1024 * 1024
QUEUED, RUNNING = "IN_QUEUE", "IN_PROGRESS"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


@dataclass
class EmulatedJob:
    """One job as RunPod keeps it."""

    id: str
    endpoint_id: str
    input: Any
    webhook: str | None
    policy: dict[str, Any]
    status: str = QUEUED
    output: Any = None
    error: Any = None
    worker_id: str | None = None
    created_at: float = field(default_factory=time.monotonic)
    submitted_wall: float = field(default_factory=time.time)  # for latency measurements across processes
    started_at: float | None = None
    finished_at: float | None = None

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        now = time.monotonic()
        body["delayTime"] = int(((self.started_at or now) - self.created_at) * 1000)
        if self.started_at:
            body["executionTime"] = int(((self.finished_at or now) - self.started_at) * 1000)
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        return body


@dataclass
class WebhookDelivery:
    job_id: str
    url: str
    attempt: int
    status_code: int | None
    body: dict[str, Any]


class RunPodEmulator:
    """Serve the emulated RunPod on 127.0.0.1 from a background thread."""

    def __init__(self, api_key: str = "test-runpod-key", result_retention_s: float = 1800.0,
                 webhook_retry_delay_s: float = 10.0, webhook_attempts: int = 3,
                 job_take_wait_s: float = 1.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.result_retention_s = result_retention_s
        self.webhook_retry_delay_s = webhook_retry_delay_s
        self.webhook_attempts = webhook_attempts
        self.job_take_wait_s = job_take_wait_s
        self.lock = threading.RLock()
        self.jobs: dict[str, EmulatedJob] = {}
        self.submissions: list[EmulatedJob] = []  # every accepted /run, in order
        self.webhook_deliveries: list[WebhookDelivery] = []
        self.requests: dict[str, int] = {}  # "POST /run" -> count, for assertions
        self.job_take_calls: list[tuple[str, float]] = []  # (worker id, wall-clock time) of each job-take request
        self.taken: list[tuple[str, list[str]]] = []  # (route, job ids) of every answer that handed out jobs
        self.stop_pod: list[str] = []  # ids of the jobs whose job-done asked RunPod to stop the worker
        self._throttle_runs = 0  # answer this many /run calls with 429
        self._task_throttles: dict[str, tuple[int, float]] = {}  # task id -> (429s left, Retry-After s)
        self._run_faults = (0.0, 0.0, 0.0)  # rates: 429, 500 before the job is made, 500 after
        self._webhook_loss = 0.0
        self._rng = random.Random(0)
        self.faults: dict[str, int] = {}  # fault -> how many were injected
        self._answer_gate: threading.Event | None = None  # set while /run answers are held (job made)
        self._throttle_status = 0
        self._run_gate: threading.Event | None = None  # set while /run calls are held
        self._held_runs = 0
        self._stop_requests: dict[str, set[str]] = {}  # worker id -> job ids to stop
        self._config = uvicorn.Config(
            Starlette(routes=self.routes()), host=host, port=port, log_level="warning",
            lifespan="on", loop="asyncio", http="httptools", access_log=False, timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> "RunPodEmulator":
        self._thread = threading.Thread(target=self._serve, name="runpod-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the RunPod emulator did not start")
            time.sleep(0.01)
        return self

    def _serve(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._http = httpx.AsyncClient(timeout=5.0)
            ticker = asyncio.create_task(self._tick())
            try:
                await self._server.serve()
            finally:
                ticker.cancel()
                await self._http.aclose()

        asyncio.run(main())

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def api_base_url(self) -> str:
        """What the dispatcher uses instead of https://api.runpod.ai/v2."""
        return f"{self.url}/v2"

    def worker_env(self, endpoint_id: str, pod_id: str) -> dict[str, str]:
        """RUNPOD_* variables that make the runpod SDK work for this emulator's endpoint."""
        base = f"{self.url}/{endpoint_id}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=emulated",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=emulated",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=emulated",
            "RUNPOD_POD_ID": pod_id,
            "RUNPOD_ENDPOINT_ID": endpoint_id,
        }

    # --- routes -------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """The public API and the worker protocol, then extra_routes()."""
        return [
            Route("/v2/{endpoint}/run", self._run, methods=["POST"]),
            Route("/v2/{endpoint}/status/{job_id}", self._status, methods=["GET", "POST"]),
            Route("/v2/{endpoint}/cancel/{job_id}", self._cancel, methods=["POST"]),
            Route("/v2/{endpoint}/health", self._health, methods=["GET"]),
            Route("/{endpoint}/job-take/{worker}", self._job_take, methods=["GET"]),
            Route("/{endpoint}/job-take-batch/{worker}", self._job_take_batch, methods=["GET"]),
            Route("/{endpoint}/job-stop/{worker}", self._job_stop, methods=["GET"]),
            Route("/{endpoint}/job-done/{worker}/{job_id}", self._job_done, methods=["POST"]),
            Route("/{endpoint}/job-stream/{worker}/{job_id}", self._job_stream, methods=["POST"]),
            *self.extra_routes(),
        ]

    def extra_routes(self) -> list[BaseRoute]:
        """Override in a subclass to serve more of RunPod (management API, GraphQL...)."""
        return []

    def _count(self, name: str) -> None:
        with self.lock:
            self.requests[name] = self.requests.get(name, 0) + 1

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.api_key}"

    async def _run(self, request: Request) -> Response:
        self._count("run")
        if not self._authorised(request):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        with self.lock:
            if self._throttle_runs > 0:
                self._throttle_runs -= 1
                return JSONResponse({"error": "Too many requests"}, status_code=429, headers={"Retry-After": "0"})
            gate = self._run_gate
        raw = await request.body()
        if len(raw) > MAX_RUN_BODY:
            return JSONResponse({"error": "request body exceeds 10 MB"}, status_code=413)
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict) or "input" not in body:
            return JSONResponse({"error": "body needs an 'input'"}, status_code=400)
        task_id = body["input"].get("task_id") if isinstance(body["input"], dict) else None
        with self.lock:
            left, retry_after = self._task_throttles.get(task_id, (0, 0.0))
            if left > 0:
                self._task_throttles[task_id] = (left - 1, retry_after)
                self._fault("task_429")
                return JSONResponse({"error": "Too many requests"}, status_code=429,
                                    headers={"Retry-After": f"{retry_after:g}"})
            fault = self._draw_run_fault()
        if fault == "429":
            return JSONResponse({"error": "Too many requests"}, status_code=429, headers={"Retry-After": "0"})
        if fault == "500_before":
            return JSONResponse({"error": "internal error"}, status_code=500)
        if gate is not None:
            # Held: the client is waiting for an answer; if the gate is dropped, no job is made.
            with self.lock:
                self._held_runs += 1
            while not gate.is_set():
                await asyncio.sleep(0.01)
            with self.lock:
                self._held_runs -= 1
                dropped = getattr(gate, "dropped", False)
            if dropped:
                return JSONResponse({"error": "dropped by the test"}, status_code=503)
        job = EmulatedJob(
            id=f"{uuid.uuid4()}-e1", endpoint_id=request.path_params["endpoint"], input=body["input"],
            webhook=body.get("webhook"), policy=body.get("policy") or {},
        )
        with self.lock:
            self.jobs[job.id] = job
            self.submissions.append(job)
            answers = self._answer_gate
        if fault == "500_after":
            return JSONResponse({"error": "internal error"}, status_code=500)
        if answers is not None:
            while not answers.is_set():
                await asyncio.sleep(0.01)
        return JSONResponse({"id": job.id, "status": QUEUED})

    def _fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1

    def _draw_run_fault(self) -> str | None:
        rate_429, rate_before, rate_after = self._run_faults
        draw = self._rng.random()
        for name, rate in (("429", rate_429), ("500_before", rate_before), ("500_after", rate_after)):
            if draw < rate:
                self._fault(name)
                return name
            draw -= rate
        return None

    def _job(self, request: Request) -> EmulatedJob | None:
        with self.lock:
            job = self.jobs.get(request.path_params["job_id"])
        if job is None or job.endpoint_id != request.path_params["endpoint"]:
            return None
        return job

    async def _status(self, request: Request) -> Response:
        self._count("status")
        if not self._authorised(request):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        with self.lock:
            if self._throttle_status > 0:
                self._throttle_status -= 1
                return JSONResponse({"error": "Too many requests"}, status_code=429)
        job = self._job(request)
        if job is None:
            return JSONResponse({"error": "request does not exist"}, status_code=404)
        with self.lock:
            return JSONResponse(job.status_body())

    async def _cancel(self, request: Request) -> Response:
        self._count("cancel")
        if not self._authorised(request):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        job = self._job(request)
        if job is None:
            return JSONResponse({"error": "request does not exist"}, status_code=404)
        with self.lock:
            if job.status not in FINAL:
                if job.status == RUNNING and job.worker_id:
                    self._stop_requests.setdefault(job.worker_id, set()).add(job.id)
                job.status = "CANCELLED"
                job.finished_at = time.monotonic()
            return JSONResponse(job.status_body())

    async def _health(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        endpoint = request.path_params["endpoint"]
        with self.lock:
            jobs = [j for j in self.jobs.values() if j.endpoint_id == endpoint]
            counts = {
                "completed": sum(j.status == "COMPLETED" for j in jobs),
                "failed": sum(j.status in ("FAILED", "TIMED_OUT") for j in jobs),
                "inProgress": sum(j.status == RUNNING for j in jobs),
                "inQueue": sum(j.status == QUEUED for j in jobs),
                "retried": 0,
            }
            running = len({j.worker_id for j in jobs if j.status == RUNNING})
        return JSONResponse({"jobs": counts, "workers": {"idle": 0, "running": running}})

    # worker side

    def _take(self, endpoint: str, worker: str) -> EmulatedJob | None:
        with self.lock:
            for job in self.jobs.values():
                if job.endpoint_id == endpoint and job.status == QUEUED:
                    job.status, job.worker_id, job.started_at = RUNNING, worker, time.monotonic()
                    return job
        return None

    async def _job_take(self, request: Request) -> Response:
        endpoint, worker = request.path_params["endpoint"], request.path_params["worker"]
        with self.lock:
            self.job_take_calls.append((worker, time.time()))
        deadline = time.monotonic() + self.job_take_wait_s
        while True:  # long poll, as the real job-take does
            job = self._take(endpoint, worker)
            if job is not None:
                with self.lock:
                    self.taken.append(("job-take", [job.id]))
                return JSONResponse({"id": job.id, "input": job.input})
            if time.monotonic() >= deadline:
                return Response(status_code=204)
            await asyncio.sleep(0.02)

    async def _job_take_batch(self, request: Request) -> Response:
        endpoint, worker = request.path_params["endpoint"], request.path_params["worker"]
        with self.lock:
            self.job_take_calls.append((worker, time.time()))
        size = max(1, int(request.query_params.get("batch_size", "1")))
        deadline = time.monotonic() + self.job_take_wait_s
        while True:
            taken = []
            while len(taken) < size and (job := self._take(endpoint, worker)) is not None:
                taken.append({"id": job.id, "input": job.input})
            if taken:
                with self.lock:
                    self.taken.append(("job-take-batch", [job["id"] for job in taken]))
                return JSONResponse(taken)
            if time.monotonic() >= deadline:
                return Response(status_code=204)
            await asyncio.sleep(0.02)

    async def _job_stop(self, request: Request) -> Response:
        worker = request.path_params["worker"]
        deadline = time.monotonic() + self.job_take_wait_s
        while True:
            with self.lock:
                ids = sorted(self._stop_requests.pop(worker, set()))
            if ids or time.monotonic() >= deadline:
                return JSONResponse({"jobsToStop": ids})
            await asyncio.sleep(0.05)

    async def _job_done(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())  # sent as x-www-form-urlencoded, but it is JSON
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        job = self._job(request)
        if job is None:
            return JSONResponse({"error": "unknown job"}, status_code=404)
        if body.get("status") == RUNNING:
            with self.lock:
                if job.status == RUNNING:
                    job.output = body.get("output")
            return JSONResponse({})
        if body.get("stopPod"):
            with self.lock:
                self.stop_pod.append(job.id)
        self.finish_job(job.id, output=body.get("output"), error=body.get("error"))
        return JSONResponse({})

    async def _job_stream(self, request: Request) -> Response:
        return JSONResponse({})

    # --- test controls ------------------------------------------------------------------

    def throttle_runs(self, count: int) -> None:
        """Answer the next `count` /run calls with 429."""
        with self.lock:
            self._throttle_runs = count

    def throttle_task(self, task_id: str, count: int, retry_after_s: float) -> None:
        """Answer the next `count` /run calls for this task with 429 and Retry-After."""
        with self.lock:
            self._task_throttles[task_id] = (count, retry_after_s)

    def inject_run_faults(self, rate_429: float = 0.0, rate_500_before: float = 0.0, rate_500_after: float = 0.0,
                          seed: int = 0) -> None:
        """From now on answer a share of /run calls 429, 500 without a job, or 500 with the job made."""
        with self.lock:
            self._run_faults = (rate_429, rate_500_before, rate_500_after)
            self._rng = random.Random(seed)

    def lose_webhooks(self, rate: float) -> None:
        """Never deliver this share of webhooks (no attempt at all)."""
        with self.lock:
            self._webhook_loss = rate

    def hold_run_answers(self) -> None:
        """Make the jobs of /run calls at once, but keep their answers back until release_run_answers()."""
        with self.lock:
            self._answer_gate = threading.Event()

    def release_run_answers(self) -> None:
        with self.lock:
            gate, self._answer_gate = self._answer_gate, None
        if gate is not None:
            gate.set()

    def throttle_status(self, count: int) -> None:
        with self.lock:
            self._throttle_status = count

    def hold_runs(self) -> None:
        """Keep /run calls waiting (no job made yet) until release_runs()."""
        with self.lock:
            self._run_gate = threading.Event()

    def held_runs(self) -> int:
        with self.lock:
            return self._held_runs

    def release_runs(self, drop: bool = False) -> None:
        """Let held /run calls through, or (drop=True) answer them 503 without making jobs."""
        with self.lock:
            gate, self._run_gate = self._run_gate, None
        if gate is not None:
            gate.dropped = drop  # type: ignore[attr-defined]
            gate.set()

    def take_job(self, endpoint_id: str, worker_id: str = "scripted") -> EmulatedJob | None:
        """Start the oldest queued job, as a worker's job-take would."""
        return self._take(endpoint_id, worker_id)

    def progress(self, job_id: str, output: Any) -> None:
        with self.lock:
            job = self.jobs[job_id]
            if job.status == RUNNING:
                job.output = output

    def finish_job(self, job_id: str, output: Any = None, error: Any = None) -> None:
        """End a running job as a worker's job-done would (error -> FAILED)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.status in FINAL:
                return
            job.status = "FAILED" if error else "COMPLETED"
            job.output, job.error = output, error
            job.finished_at = time.monotonic()
            body = dict(job.status_body(), input=job.input)
            webhook = job.webhook
            if webhook and self._webhook_loss and self._rng.random() < self._webhook_loss:
                self._fault("webhook_lost")
                webhook = None
        if webhook and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._deliver(job_id, webhook, body), self._loop)

    def expire(self, job_id: str) -> None:
        """Forget a job, as RunPod does 30 minutes after it ended (then /status is 404)."""
        with self.lock:
            self.jobs.pop(job_id, None)

    def submissions_for(self, task_id: str) -> list[EmulatedJob]:
        with self.lock:
            return [j for j in self.submissions if isinstance(j.input, dict) and j.input.get("task_id") == task_id]

    async def _deliver(self, job_id: str, url: str, body: dict[str, Any]) -> None:
        for attempt in range(1, self.webhook_attempts + 1):
            code: int | None = None
            try:
                response = await self._http.post(url, json=body)  # type: ignore[union-attr]
                code = response.status_code
            except httpx.HTTPError:
                pass
            with self.lock:
                self.webhook_deliveries.append(WebhookDelivery(job_id, url, attempt, code, body))
            if code == 200:
                return
            if attempt < self.webhook_attempts:
                await asyncio.sleep(self.webhook_retry_delay_s)

    async def _tick(self) -> None:
        # Policies: executionTimeout -> TIMED_OUT; ttl and result retention -> forgotten.
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            with self.lock:
                for job in list(self.jobs.values()):
                    timeout_ms = job.policy.get("executionTimeout")
                    if job.status == RUNNING and timeout_ms and now - (job.started_at or now) > timeout_ms / 1000:
                        job.status, job.finished_at = "TIMED_OUT", now
                        if job.worker_id:
                            self._stop_requests.setdefault(job.worker_id, set()).add(job.id)
                    ttl_ms = job.policy.get("ttl")
                    if ttl_ms and now - job.created_at > ttl_ms / 1000:
                        self.jobs.pop(job.id, None)
                    elif job.status in FINAL and job.finished_at and now - job.finished_at > self.result_retention_s:
                        self.jobs.pop(job.id, None)


class ScriptedWorker:
    """A worker that speaks the wire protocol (job-take / job-done) and runs a Python function.

    `run(job_input, report_progress)` returns the handler's result dict: `{"error": ...}`
    makes the job FAILED, anything else is the output. Stands in for handler.py where the
    test is about the dispatcher, not ComfyUI. `before_run(job_input, job_id)`, if given, is
    asked first, as handler.py asks its start fence: a dict it returns is the result and
    `run` is not called.
    """

    def __init__(self, emulator: RunPodEmulator, endpoint_id: str,
                 run: Callable[[Any, Callable[[Any], None]], Any], worker_id: str = "scripted-worker",
                 concurrency: int = 4, before_run: Callable[[Any, str], Any] | None = None) -> None:
        self.emulator, self.endpoint_id, self.fn, self.worker_id = emulator, endpoint_id, run, worker_id
        self.concurrency = concurrency
        self.before_run = before_run
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.handled: list[str] = []

    def start(self) -> "ScriptedWorker":
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"scripted-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _loop(self) -> None:
        base = f"{self.emulator.url}/{self.endpoint_id}"
        with httpx.Client(timeout=10.0) as http:
            while not self._stop.is_set():
                try:
                    response = http.get(f"{base}/job-take/{self.worker_id}?gpu=x&job_in_progress=0")
                except httpx.HTTPError:
                    continue
                if response.status_code != 200:
                    continue
                job = response.json()
                done_url = f"{base}/job-done/{self.worker_id}/{job['id']}?gpu=x&isStream=false"

                def report(progress: Any, url: str = done_url) -> None:
                    http.post(url, content=json.dumps({"status": RUNNING, "output": progress}))

                try:
                    refused = self.before_run(job["input"], job["id"]) if self.before_run else None
                    result = refused if refused is not None else self.fn(job["input"], report)
                except Exception as exc:  # a raising handler: the SDK reports the error text
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                if isinstance(result, dict) and "error" in result:
                    result = dict(result)
                    body = {"error": result.pop("error")}
                    if result:
                        body["output"] = result
                else:
                    body = {"output": result}
                http.post(done_url, content=json.dumps(body), headers={"Content-Type": "application/x-www-form-urlencoded"})
                self.handled.append(job["id"])
