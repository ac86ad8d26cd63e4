"""Which device and dtype a model runs on: names, the defaults per device, and the draft's dtype on CPU, chosen by
measuring the draft's own forwards."""
import functools
import logging

import torch

from . import paired
from .calibration import cached_choice
from .linear import fast_linears, plan_key
from .profiler import Forwards, draft_forwards

log = logging.getLogger("specdec")

DEVICES = "auto, cpu, cuda, cuda:<index>, mps"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64,
          "fp64": torch.float64}


def _mps_available():
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device="auto") -> torch.device:
    name = str(device).strip().lower()
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
        log.info("device: auto -> %s (cuda first, then mps, then cpu)", dev)
        return dev
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}: choose one of {DEVICES}")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"malformed device {device!r}: choose one of {DEVICES}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        best = "mps" if _mps_available() else "cpu"
        raise ValueError(f"device {device!r} was requested but {why}; use device='{best}' (or 'auto')")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} was requested but MPS (Apple GPU) is not available; use 'cpu' or 'auto'")
    return dev


def resolve_dtype(dtype, device) -> torch.dtype:
    device = torch.device(device)
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if dtype is None or dtype == "auto":
        if cap is not None:  # bfloat16 is native from Ampere (8.x) on; a T4 (7.5) only has float16
            chosen = torch.bfloat16 if cap >= (8, 0) else torch.float16
            why = f"auto: CUDA compute capability {cap[0]}.{cap[1]}"
        else:  # half precision is slow or emulated on most CPUs; MPS is fastest in float16
            chosen = torch.float16 if device.type == "mps" else torch.float32
            why = f"auto: {device.type}"
    elif isinstance(dtype, torch.dtype):
        chosen, why = dtype, "requested"
    elif str(dtype).lower().removeprefix("torch.") in DTYPES:
        chosen, why = DTYPES[str(dtype).lower().removeprefix("torch.")], "requested"
    else:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    if chosen not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"dtype {chosen} is not a floating-point type a model can run in")
    if device.type == "mps" and chosen == torch.float64:
        raise ValueError("float64 cannot run on mps (Apple GPUs have no float64): use float32, or device='cpu'")
    if device.type == "cpu" and chosen == torch.float16:
        log.warning("float16 on cpu runs but is slow; float32 (or bfloat16) is faster here")
    if cap is not None and cap < (8, 0) and chosen == torch.bfloat16:
        log.warning("bfloat16 on a compute capability %d.%d GPU is emulated and slow; float16 is native", *cap)
    log.info("dtype: %s on %s (%s)", str(chosen).removeprefix("torch."), device, why)
    return chosen


DRAFT_DTYPES = "draft-dtypes.json"  # under specdec.machine.measurement_root()
DTYPE_RULE = 2  # how faster_draft_dtype judges; part of its cache key, so a choice made by an older rule is not read
PREFILL_TOKENS = 64  # the prompt a draft prefill is timed on (as 64 new tokens after Forwards' cached ones)


def faster_draft_dtype(load_draft, key) -> torch.dtype:
    """float32, unless bfloat16 runs the draft model's own forwards clearly faster on this CPU as it steps (one
    token, most draft steps, plus two, a round's first step after a fully accepted round) and float32 does not
    clearly beat it as it prefills a prompt (PREFILL_TOKENS at once): speculation pays the draft's prefill. Each
    dtype at its measured linear paths, the two timed interleaved and compared paired (specdec.paired). Whole
    forwards, not one product: with PyTorch's default path a bfloat16 Qwen2.5-0.5B ran one token 2x faster than
    float32 but two tokens 2x slower (its vocabulary projection left the fast bfloat16 kernel); and a CPU without
    native bfloat16 (a Zen 3, AMD family 25 model 1, AVX2 only) stepped it in 0.66-0.88x float32's time but
    prefilled it in 4.6-4.9x (paired), where the step alone chose bfloat16 in one of two calibrations.
    `load_draft(dtype)` loads the draft in a dtype; `key` names it. Cached per machine and model, timed in quiet
    moments (specdec.calibration.cached_choice)."""
    def measure():
        models = {str(d).removeprefix("torch."): load_draft(d) for d in (torch.float32, torch.bfloat16)}
        with torch.inference_mode(), fast_linears(list(models.values())):
            forwards = {d: Forwards(m, most=PREFILL_TOKENS) for d, m in models.items()}
            steps = paired.interleaved({d: functools.partial(draft_forwards, f) for d, f in forwards.items()}, 3)
            prefills = paired.interleaved({d: functools.partial(f, PREFILL_TOKENS) for d, f in forwards.items()}, 3)
        steps_faster = paired.fastest(steps, "float32") == "bfloat16"
        prefill_no_slower = paired.fastest(prefills, "bfloat16") == "bfloat16"
        # each decision's own statistic beside the fastest passes: paired, a median of per-pass ratios
        return dict(**{f"{d}_s": min(s) for d, s in steps.items()},
                    **{f"{d}_prefill_s": min(s) for d, s in prefills.items()},
                    bfloat16_vs_float32=paired.ratios([steps], "float32")[0]["bfloat16"],
                    prefill_bfloat16_vs_float32=paired.ratios([prefills], "float32")[0]["bfloat16"],
                    choice="bfloat16" if steps_faster and prefill_no_slower else "float32")

    entry = cached_choice(DRAFT_DTYPES, plan_key(), f"{key} | rule {DTYPE_RULE}", measure, "timing the draft's dtype")
    return getattr(torch, entry["choice"])
