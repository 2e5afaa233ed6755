"""What an operator uses: the admin API and dashboard (``admin``) and the
``gate-middleware`` command (``cli``). It imports the gate's front and the
domain.
"""
