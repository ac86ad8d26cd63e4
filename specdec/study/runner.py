"""The study: run every notebook in notebooks/ with papermill for one hardware target.

    python -m specdec.study --target cpu                             # this machine, the offline pair
    python -m specdec.study --target t4                              # Colab T4 (notebooks/colab_t4.ipynb)
    python -m specdec.study --target cpu --smoke --out /tmp/smoke    # tiny random models, seconds each
    python -m specdec.study --target cpu --only 03_verification_latency
    python -m specdec.study --target cuda -p k_sweep.pair=gpt2-random -p batch_sweep.pair=llama-3.2-random

Parameters: specdec/study/targets/<target>.yaml has a `common` section (given to every notebook that declares
the key) and one section per notebook (k_sweep, batch_sweep, ...); --smoke lays targets/smoke.yaml over
it; `-p [section.]key=value` (value parsed as YAML; no section = common) comes last.
Outputs, under --out (default: the repository root; with --smoke: <repo>/smoke):
    data/<target>/<section>/              each notebook's data: results.jsonl + provenance-*.json, rows.csv,
                                          cells.csv, summary.csv (the table), readout.md (the sentences)
    data/<target>/notebooks/<nb>.ipynb    the executed notebooks
    data/<target>/README.md               the summary page (tables, figures, data, provenance, run times)
    figures/<target>/<section>*.png|svg   the figures
A run is a new measurement: it replaces data/<target>/ and figures/<target>/ (with --only, just those notebooks'
folders). An interrupted run is continued, keeping every finished cell, with --resume, or automatically when it
was started on the same machine, from the same code and with the same parameters (data/<target>/study-run.json
records which). A notebook whose models cannot be had here (a gated hub model without HF_TOKEN, no hub access) is
skipped, and the summary page says what and why. The runner goes on after a failing notebook, shows the failure
on the summary page and exits 1.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import papermill
import yaml
from ipykernel.kernelspec import install as install_kernel
from jupyter_client.kernelspec import KernelSpecManager

from ..devices import resolve_device
from ..machine import measurement_root
from ..models import unavailable
from .page import RUNS_FILE, section, write_summary
from .provenance import TARGET_DIR, provenance
from .results import close_study_run, fingerprint, now, open_study_run, scrub_paths

# The study's inputs in a checkout: given to the notebooks as parameters (relative to their working folder).
# The prompt set is the target's `prompt_set` (common section), a file under PROMPTS.
PROMPTS, REFERENCE = Path("data/prompts"), Path("data/reference/seed_results.csv")
PROMPT_SET = "population.jsonl"

def checkout(start=".") -> Path:
    """The specdec checkout the study runs from: the git top level of `start` (the current folder), else `start`.
    The notebooks, prompts and the seed's reference numbers are read from there."""
    try:
        top = subprocess.run(["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        top = ""
    return Path(top or start).resolve()


# -- configuration ---------------------------------------------------------------------------------------------

def notebooks(repo) -> dict:
    """{'01_k_sweep': path, ...} in run order; a notebook's section name drops the number: k_sweep."""
    folder = Path(repo) / "notebooks"
    if not folder.is_dir():
        raise SystemExit(f"no notebooks at {folder}: run the study from a source checkout of specdec (git clone, "
                         f"then bash scripts/setup.sh), or pass --repo")
    return {p.stem: p for p in sorted(folder.glob("[0-9][0-9]_*.ipynb"))}


def targets() -> list:
    return sorted(p.stem for p in TARGET_DIR.glob("*.yaml") if p.stem != "smoke")


def load_config(target, smoke=False, overrides=()) -> dict:
    config = yaml.safe_load((TARGET_DIR / f"{target}.yaml").read_text()) or {}
    layers = [yaml.safe_load((TARGET_DIR / "smoke.yaml").read_text())] if smoke else []
    layers.append(parse_overrides(overrides))
    for layer in layers:
        for sec, values in layer.items():
            if isinstance(values, dict):
                config.setdefault(sec, {}).update(values)
    return config


def parse_overrides(items) -> dict:
    """['k_sweep.pair=gpt2-random', 'iterations=1'] -> {'k_sweep': {'pair': 'gpt2-random'}, 'common': {...}}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad -p {item!r}: use [notebook.]key=value, e.g. k_sweep.pair=gpt2-random")
        sec, _, key = key.rpartition(".")
        out.setdefault(section(sec) if sec[:2].isdigit() else sec or "common", {})[key] = yaml.safe_load(value)
    return out


def notebook_params(name, path, config, target, data_dir, figures_dir, inputs) -> dict:
    """The parameters papermill injects: common keys the notebook declares, then its section, then paths
    (`inputs`: the prompt and reference files, for the notebooks that declare them).
    A section key the notebook does not declare is a typo, and an error (papermill would only warn)."""
    declared = papermill.inspect_notebook(str(path))
    params = {k: v for k, v in (config.get("common") or {}).items() if k in declared}
    sec = config.get(section(name)) or {}
    unknown = sorted(set(sec) - set(declared))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; the notebook declares {sorted(declared)}")
    params.update(sec, target=target, data_dir=str(data_dir), figures_dir=str(figures_dir))
    params.update({k: str(v) for k, v in inputs.items() if k in declared})
    return params


# -- running -----------------------------------------------------------------------------------------------------

def ensure_kernel():
    """papermill needs a kernel named python3; a fresh machine (or venv) may lack the spec."""
    if "python3" not in KernelSpecManager().find_kernel_specs():
        install_kernel(user=True)


def run_notebook(path, executed, params, cwd, verbose=False) -> tuple:
    """(status, seconds, error); the executed copy is saved cell by cell, so a failure keeps what ran."""
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(path), str(executed), parameters=params, kernel_name="python3",
                                   # papermill's bar on stderr: cells done out of the total, and the time left
                                   cwd=str(cwd), progress_bar=not verbose, log_output=verbose,
                                   request_save_on_cell_execute=True)
        return "ok", time.perf_counter() - start, ""
    except Exception as e:  # noqa: BLE001 -- one failing notebook must not stop the others
        error = f"{e.ename}: {e.evalue}" if hasattr(e, "ename") else f"{type(e).__name__}: {e}"
        return "failed", time.perf_counter() - start, error[:2000]


def notebook_sections(data_dir, target, smoke) -> dict:
    """{section: parameters}: what the notebooks of this run were given (study-provenance.json: the target's yaml
    with --smoke and -p laid over it), over the target's yaml for the notebooks this run did not run (--only)."""
    config = load_config(target, smoke)
    sections = {k: v for k, v in config.items() if k != "common" and isinstance(v, dict)}
    path = data_dir / "study-provenance.json"
    ran = json.loads(path.read_text()).get("params", {}).get("notebooks", {}) if path.is_file() else {}
    return {**sections, **{section(n): p for n, p in ran.items()}}


def drop_unavailable(name, params) -> list:
    """Remove the pairs this machine cannot load from a notebook's parameters (in place); the reasons why.
    A notebook left with no pair is skipped by the caller."""
    pairs = params.get("pair")
    if pairs is None:
        return []
    listed = isinstance(pairs, list)
    reasons = {p: unavailable(p) for p in (pairs if listed else [pairs])}
    kept = [p for p, why in reasons.items() if why is None]
    if listed:
        params["pair"] = kept
    elif not kept:
        params["pair"] = None
    return [f"pair {p}: {why}" for p, why in reasons.items() if why]


def calibrate(params, device, dtype, threads, force, data_dir) -> list[str]:
    """`python -m specdec calibrate` for every pair the notebooks use (batch 1 and the batch sweep's sizes), before
    any notebook runs; its report goes to data/<target>/calibration.txt and the summary page, the record each report
    names beside it (calibration-<id>.json). The notebooks then
    run with SPECDEC_CALIBRATION=fixed: the calibration is not re-measured inside an experiment, so no comparison
    mixes two (a row slower than its calibration predicts is still marked: calibration_suspect)."""
    batches = {}
    for p in params.values():
        for pair in ([p["pair"]] if isinstance(p.get("pair"), str) else p.get("pair") or []):
            batches.setdefault(pair, {1}).update(p.get("batch_sizes") or [])
    report = []
    for pair, sizes in batches.items():
        cmd = [sys.executable, "-m", "specdec", "calibrate", "--pair", pair, "--device", str(device), "--dtype",
               str(dtype), "--batch", ",".join(map(str, sorted(sizes))), "--save-to", str(data_dir)] + ["--force"] * force \
            + (["--threads", str(threads)] if threads else [])
        print(f"calibrating {pair} (batch {', '.join(map(str, sorted(sizes)))})", flush=True)
        run = subprocess.run(cmd, capture_output=True, text=True)
        lines = run.stdout.splitlines() + ([f"calibrate failed: {run.stderr.strip()[-1000:]}"] if run.returncode else [])
        print("\n".join(f"    {line}" for line in lines), flush=True)
        report += lines
    (data_dir / "calibration.txt").write_text("\n".join(report) + "\n")
    return report


def parser():
    p = argparse.ArgumentParser(prog="python -m specdec.study", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--target", required=True, help="hardware target: a file in specdec/study/targets/")
    p.add_argument("--smoke", action="store_true", help="tiny random models, a few tokens: seconds per notebook")
    p.add_argument("--only", action="append", default=[], help="notebook(s) to run, e.g. 03_verification_latency")
    p.add_argument("--out", help="output root (default: the checkout; with --smoke: <checkout>/smoke)")
    p.add_argument("--repo", help="the specdec checkout whose notebooks and data/ inputs to use (default: the "
                                  "git checkout of the current folder)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="[NOTEBOOK.]KEY=VALUE",
                   help="override a parameter (YAML value), e.g. -p k_sweep.pair=gpt2-random")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output folder (keeps every finished cell) instead of a new one")
    p.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    p.add_argument("--fresh-calibration", action="store_true",
                   help="measure the linear plans and auto's costs again before the notebooks, even if cached")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    valid = targets()
    if args.target not in valid:
        print(f"error: unknown target {args.target!r}; choose from {', '.join(valid)}", file=sys.stderr)
        return 2
    repo = checkout(args.repo or ".")
    names = notebooks(repo)
    wanted = [n for n in names if not args.only or any(o in (n, section(n), n[:2], n[:2].lstrip("0"))
                                                      for o in args.only)]
    unknown = [o for o in args.only if not any(o in (n, section(n), n[:2], n[:2].lstrip("0")) for n in names)]
    out = Path(args.out or (repo / "smoke" if args.smoke else repo)).resolve()
    # Paths given to the notebooks are relative to `out` (their working folder): no machine's absolute paths
    # end up in the executed notebooks that are published.
    data_rel, figures_rel = Path("data") / args.target, Path("figures") / args.target
    data_dir, figures_dir = out / data_rel, out / figures_rel
    try:
        if unknown:
            raise ValueError(f"unknown notebook(s) {unknown}; choose from {', '.join(names)}")
        config = load_config(args.target, args.smoke, args.param)
        device = resolve_device((config.get("common") or {}).get("device", "auto"))
        prompt_set = (config.get("common") or {}).get("prompt_set", PROMPT_SET)
        inputs = dict(prompts_file=os.path.relpath(repo / PROMPTS / prompt_set, out),
                      reference_file=os.path.relpath(repo / REFERENCE, out))
        params = {n: notebook_params(n, names[n], config, args.target, data_rel, figures_rel, inputs) for n in wanted}
    except ValueError as e:  # bad -p, unknown notebook key, unknown device: say so before any work
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = {n: drop_unavailable(n, params[n]) for n in wanted}
    for name, reasons in skipped.items():
        for why in reasons:
            print(f"{name}: skipping {why}", flush=True)

    # The kernels are subprocesses: they inherit this environment, so they import this checkout's specdec.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(repo)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["SPECDEC_CALIBRATION"] = "fixed"  # the notebooks keep the calibration measured next (see calibrate)
    ensure_kernel()
    state, decided = open_study_run(data_dir, figures_dir, [section(n) for n in wanted],
                                    fingerprint(str(device), dict(target=args.target, smoke=args.smoke, params=params)),
                                    resume=args.resume)
    print(decided, flush=True)
    (data_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    record = provenance(device=str(device), target=args.target, smoke=args.smoke, argv=list(argv or sys.argv[1:]),
                        study_run=state["run_id"], dtype=(config.get("common") or {}).get("dtype", "auto"),
                        notebooks=params)
    (data_dir / "study-provenance.json").write_text(json.dumps(record, indent=1))
    common = config.get("common") or {}
    calibrate({n: params[n] for n in wanted}, device, common.get("dtype", "auto"), common.get("threads"),
              args.fresh_calibration, data_dir)
    runs_path = data_dir / RUNS_FILE
    runs = json.loads(runs_path.read_text()) if runs_path.is_file() else {}
    total = time.perf_counter()
    for i, name in enumerate(wanted, 1):
        executed = data_dir / "notebooks" / f"{name}.ipynb"
        if params[name].get("pair") in (None, []):
            status, seconds, error = "skipped", 0.0, ""
            executed.unlink(missing_ok=True)
        else:
            print(f"[{i}/{len(wanted)}] {name}: running", flush=True)
            status, seconds, error = run_notebook(names[name], executed, params[name], out, args.verbose)
        runs[name] = dict(status=status, seconds=seconds, error=error, smoke=args.smoke, skipped=skipped[name],
                          study_run=state["run_id"], finished_utc=now())
        runs_path.write_text(json.dumps(runs, indent=1))
        print(f"[{i}/{len(wanted)}] {name}: {status} in {seconds:.1f} s" + (f"\n    {error}" if error else ""),
              flush=True)
    failed = [n for n in wanted if runs[n]["status"] == "failed"]
    state = close_study_run(data_dir, state, "failed" if failed else "complete")
    write_summary(data_dir, figures_dir, args.target, args.smoke, state, list(names),
                  notebook_sections(data_dir, args.target, args.smoke))
    publishable = [*data_dir.rglob("*.ipynb"), *data_dir.rglob("*.md"), *data_dir.glob("*.json"), *data_dir.glob("*.txt")]
    scrub_paths(publishable, {out: ".", repo: "<specdec>", sys.prefix: "<python>", measurement_root(): "<measurements>",
                              Path.home(): "~"})
    print(f"{len(wanted) - len(failed)}/{len(wanted)} notebooks ok or skipped in {time.perf_counter() - total:.0f} s; "
          f"summary: {data_dir / 'README.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
