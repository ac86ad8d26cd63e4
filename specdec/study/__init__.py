"""The study built on specdec: resumable benchmark sweeps with provenance, their statistics, tables and figures,
and the papermill runner that executes the notebooks once per hardware target (`python -m specdec.study`).
The engine (the package specdec) never imports this subpackage."""
