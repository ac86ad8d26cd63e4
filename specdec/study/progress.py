"""Progress of a sweep, shown on the terminal that runs the study.

papermill keeps a notebook's own output until the notebook ends, so a sweep running for half an hour would say
nothing. The bar writes to the process's real stderr: in a kernel papermill started, that stream reaches the
runner's terminal (ipykernel echoes it there) as well as the executed notebook. One redraw every 30 s at most,
with tqdm's estimate of the time left.
"""
import sys

from tqdm import tqdm

EVERY_S = 30


def bar(what, total, done=0, unit="run", enabled=True):
    """A tqdm bar over `total` units, `done` of them already finished (a resumed sweep), named `what`."""
    return tqdm(total=total, initial=done, desc=what, unit=unit, disable=not enabled,
                file=sys.__stderr__ or sys.stderr, mininterval=EVERY_S, ascii=True)
