"""What a study mode is: the one table that says, for every mode a sweep can time, who drafts, how its K is set,
whether it is a Hugging Face reference, and what tables and figures call it. bench, summary, plots and the
notebooks read this table; nothing else spells out a mode's meaning.

Columns a mode's rows carry (specdec.study.results.CELL): `mode`; `k`, the fixed K of the cell (0 for the target
alone, None where a policy or HF chooses K per round); `policy`, which policy chose K ("fixed", "auto",
"adaptive", "hf_defaults", or "none" for the target alone); `k_max`, the largest K that policy may pick. The
K auto actually chose is a metric of the row (`mean_k`).
"""
from dataclasses import dataclass

from ..policy import resolve

# What generate(assistant_model=...) uses when the user sets nothing (transformers GenerationConfig defaults).
HF_ASSISTED_DEFAULTS = dict(num_assistant_tokens=20, num_assistant_tokens_schedule="constant",
                            assistant_confidence_threshold=0.4)
NO_VERIFY = "-"  # verify column of modes where specdec's verify setting does not apply


@dataclass(frozen=True)
class Mode:
    name: str
    label: str              # for tables and figures
    drafter: str | None     # "model" (the pair's draft), "prompt_lookup", "junk" (controls.JunkDrafter: drafts never
                            # accepted), or None (the target alone)
    policy: str             # "fixed" (one cell per K of the sweep), "auto", "adaptive", "hf_defaults", "none"
    hf: bool = False        # a Hugging Face generate reference, not specdec
    batch1_only: bool = False  # HF assisted generation refuses batches
    # HF only: run inside specdec.linear.fast_linears (the measured linear path specdec takes on CPU), with the
    # assistant being the pair's draft in specdec's own draft dtype, so only HF's loop and cache differ from specdec
    specdec_path: bool = False

    @property
    def needs_draft(self) -> bool:
        return self.drafter == "model"

    @property
    def assistant_in_target_dtype(self) -> bool:
        """HF assisted generation as its users run it: the draft loaded in the target's dtype (pair.hf_draft)."""
        return self.hf and self.needs_draft and not self.specdec_path

    @property
    def sweeps_k(self) -> bool:
        return self.policy == "fixed"

    @property
    def k_max(self):
        """The largest K this mode may use (None for a fixed K: the cell's own k)."""
        return {"none": 0, "auto": resolve("auto").k_max, "adaptive": resolve("adaptive").k_max,
                "hf_defaults": HF_ASSISTED_DEFAULTS["num_assistant_tokens"]}.get(self.policy)

    @property
    def engine_k(self):
        """What specdec.generate gets as `k` for this mode (None: the cell's own k)."""
        return self.policy if self.policy in ("auto", "adaptive") else None


MODES = {m.name: m for m in (
    Mode("baseline", "target only (specdec)", None, "none"),
    # the A/A control: the same work as the baseline, timed in the same block; its "speedup" is the noise floor
    Mode("target_again", "target only, timed again (A/A control)", None, "none"),
    Mode("speculative", "specdec, draft model", "model", "fixed"),
    Mode("auto", "specdec auto K", "model", "auto"),
    Mode("adaptive", "specdec adaptive K", "model", "adaptive"),
    Mode("prompt_lookup", "specdec, prompt lookup", "prompt_lookup", "fixed"),
    Mode("junk", "specdec, never-accepted drafts (verify cost alone)", "junk", "fixed"),
    Mode("hf_generate", "HF generate (target only)", None, "none", hf=True),
    Mode("hf_generate_fast", "HF generate (target only) on specdec's linear path", None, "none", hf=True,
         specdec_path=True),
    Mode("hf_assisted", "HF assisted generation", "model", "fixed", hf=True, batch1_only=True),
    Mode("hf_assisted_fast", "HF assisted on specdec's linear path and draft dtype", "model", "fixed", hf=True,
         batch1_only=True, specdec_path=True),
    Mode("hf_assisted_default", "HF assisted, its defaults (up to 20 tokens, confidence 0.4)", "model", "hf_defaults",
         hf=True, batch1_only=True),
)}
BASELINE = "baseline"  # the mode every speedup is measured against
NAMES = tuple(MODES)


def mode_of(row) -> Mode:
    return MODES[row["mode"]]


def mean_k_chosen(row) -> str:
    """'mean K 3.2, ' where specdec's policy chose K per round and the row records the mean, else ''."""
    mean_k = row.get("mean_k")
    chosen = mode_of(row).policy in ("auto", "adaptive") and isinstance(mean_k, (int, float)) and mean_k == mean_k
    return f"mean K {mean_k:.1f}, " if chosen else ""  # (mean_k == mean_k: not NaN)


def label(row) -> str:
    """A row's (or a table line's) configuration in words: the mode's label, its K where it is fixed, the mean K
    chosen and the cap where a policy chose it."""
    m, chosen = mode_of(row), mean_k_chosen(row)
    if m.policy == "fixed":
        return f"{m.label}, K={int(row['k'])}"
    return f"{m.label} ({chosen}up to {m.k_max})" if chosen else m.label


def cells_for(mode: Mode, base: dict, ks, verify) -> list[dict]:
    """The cells of one mode for one prompt group (`base`: batch size, tokens, prompts)."""
    if mode.batch1_only and base["batch_size"] != 1:
        return []
    if mode.hf or mode.drafter is None:  # the target alone, or HF: specdec's verify setting does not apply
        verify = [NO_VERIFY]
    ks = ks if mode.sweeps_k else [0 if mode.policy == "none" else None]
    return [dict(base, mode=mode.name, k=k, policy=mode.policy, k_max=k if mode.sweeps_k else mode.k_max, verify=v)
            for k in ks for v in verify]


# The comparisons the summaries make, by mode: (mode, reference), matched on the same prompts (and K where fixed).
SPECULATIVE = "speculative"                      # the draft model at a fixed K: what Leviathan's formula predicts
VS_HF = (SPECULATIVE, "hf_assisted")             # the same K, specdec against HF assisted generation
VS_HF_DEFAULT = ("auto", "hf_assisted_default")  # what each picks by itself: auto against HF at its defaults
DEFAULT_SWEEP = (BASELINE, SPECULATIVE)
HF_GENERATE = "hf_generate"                       # HF generate alone: the outside reference for the target alone

# The decomposition of specdec's speedup, each (mode, reference) on the same prompts (and, where both fix K, the
# same K). KERNEL x LOOP x SPECULATION telescopes from HF generate to specdec speculative; ENGINE and VERIFY_COST
# are side comparisons.
KERNEL = ("hf_generate_fast", "hf_generate")     # the linear path alone: one HF loop, two kernels
LOOP = ("baseline", "hf_generate_fast")          # the decode loop and KV cache alone: one kernel, two loops
SPECULATION = ("speculative", "baseline")        # drafting and verifying at a fixed K, within specdec
AUTO_SPECULATION = ("auto", "baseline")          # the same with K chosen per round by specdec's auto policy
ENGINE = ("speculative", "hf_assisted_fast")     # same K, kernel and draft dtype: specdec's loop against HF's
A_A = ("target_again", "baseline")               # the same work twice: what a pair's ratio is when nothing differs
VERIFY_COST = ("junk", "baseline")               # a round that yields one token at (K+1)-token verify cost:
                                                 # what a wholly wrong draft costs, with no draft model run
