"""Study tools: probes and plots behind docs/ENCODER.md, run as `python -m studies.NAME` from the repository root.

They read checkpoints and run logs through nar's public API; nothing here is imported by nar or cli. See
studies/README.md for what each one asks and where its answer is recorded.
"""
