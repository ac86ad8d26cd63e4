"""How OpenVINO GenAI is found and run, for specdec.study.llamacpp: notebook 06's second outside reference, optional
like llama.cpp. Intel's CPU stack: int4 weights (NNCF's, groups of 128, asymmetric; its recipe keeps the embeddings
and the LM head at int8), int8 dynamic activations, its own kernels and its own speculative pipeline.

`bash scripts/setup_openvino.sh` builds it: a virtual environment of its own (its exporter pins an older transformers
than specdec's) and the offline pair exported there to OpenVINO's format, under $SPECDEC_OPENVINO or the cache
folder. Found, it is timed through one worker process (specdec/study/openvino_worker.py, run by that environment's
Python) that loads the target alone and the target with the draft once, then answers one request per run: the exact
prompt ids, greedy, a fixed number of new tokens (EOS ignored), on as many threads as torch uses.
"""
import contextlib
import json
import os
import selectors
import subprocess
from pathlib import Path

from ..machine import cache_root
from ..models import PAIRS

ENV = "SPECDEC_OPENVINO"  # the folder scripts/setup_openvino.sh fills
OPENVINO = "openvino"  # its tool name in the sweep's rows
WORKER = Path(__file__).with_name("openvino_worker.py")
TIMEOUT_S = 600  # the longest the worker may take to start or to answer one run (seconds, as llama.cpp's runs)
SETUP_HELP = (f"set it up with `PYTHON=.venv/bin/python bash scripts/setup_openvino.sh` (PYTHON: specdec's environment, "
              f"after scripts/setup.sh; 3 minutes, 3.1 GB); it is found where it installs by default, or set {ENV} to "
              "the folder it prints")


def folder() -> Path:
    return Path(os.environ.get(ENV) or cache_root() / "openvino").expanduser()


def exported(model) -> Path:
    """Where the setup script exports the offline model `model` (a specdec.weights.OFFLINE name) to."""
    return folder() / f"{model}-int4"


def find(pair) -> dict | None:
    """{"python", "target", "draft"} where OpenVINO's environment and the exports of the named pair's target and
    draft are in folder(), else None."""
    spec = PAIRS.get(pair, {})
    if not (spec.get("target") and spec.get("draft")):
        return None
    python = folder() / "venv" / "bin" / "python"
    models = exported(spec["target"]), exported(spec["draft"])
    if not (python.is_file() and all((m / "openvino_model.xml").is_file() for m in models)):
        return None
    return dict(python=python, target=models[0], draft=models[1])


def step_bytes(found) -> int:
    """The target's weight file: what one of its decode steps reads, give or take its embeddings' rows."""
    return (found["target"] / "openvino_model.bin").stat().st_size


def describe(found) -> str:
    if found is None:
        return f"OpenVINO GenAI is not set up here (no exported pair under {ENV} or the cache folder); {SETUP_HELP}."
    return f"OpenVINO GenAI found ({found['target'].name} + {found['draft'].name}, exported by scripts/setup_openvino.sh)."


class Worker:
    """The worker process, for a `with` block: started (both pipelines loaded) on entry, stopped on exit; what it
    prints besides its answers goes to `log`. A worker that does not start, dies or hangs fails its runs (each a
    failed row of the sweep, with the reason), never the sweep: OpenVINO is an optional reference."""

    def __init__(self, found, threads, log):
        self.cmd = [str(found["python"]), str(WORKER), str(found["target"]), str(found["draft"]), str(threads)]
        self.log, self.proc, self.version, self.error = Path(log), None, "openvino-genai (did not start)", None

    def __enter__(self):
        with self.log.open("a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            self.version = f"openvino-genai {self._reply()['ready']}"
        except (RuntimeError, ValueError, KeyError) as e:
            self.error = f"OpenVINO's worker did not start: {e}"
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(BrokenPipeError):  # a worker that died: nothing left to tell it
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def _reply(self) -> dict:
        """The worker's next line, within TIMEOUT_S (a request or the start, both pipelines loading, take seconds)."""
        with selectors.DefaultSelector() as wait:
            wait.register(self.proc.stdout, selectors.EVENT_READ)
            ready = wait.select(TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise RuntimeError(f"OpenVINO's worker {'exited' if ready else f'sent nothing in {TIMEOUT_S} s'}; its "
                               f"output is in {self.log}")
        return json.loads(line)

    def run(self, mode, ids, n, k=None) -> tuple[dict, str]:
        """One timed run: (timings in llama.cpp's terms, the new text)."""
        if self.error or self.proc.poll() is not None:
            raise RuntimeError(self.error or f"OpenVINO's worker exited; its output is in {self.log}")
        self.proc.stdin.write(json.dumps(dict(mode=mode, ids=list(ids), n=n, k=k)) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"OpenVINO {mode}: {reply['error']}")
        text = reply.pop("text")
        return reply, text
