"""The domain: pure values and their rules, no I/O and no threads.

``environment`` (where a release stands), ``config`` (a rollout's settings),
``plan`` (the rollout plan and its next action), ``state`` (the gate's state
and its events), ``routing`` (the published SHA-256 bucket formula),
``naming`` (what names, reasons and tokens may be) and ``codec`` (the
state as stored). It imports the judge's verdict (events carry it) and
nothing else of the package but ``errors``.
"""
