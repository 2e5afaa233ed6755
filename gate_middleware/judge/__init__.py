"""The judge: evidence in, verdict out.

``sketch`` (the latency histogram), ``evidence`` (a step's counts),
``statistics`` (the ``Check`` port, the anytime-valid checks, their budget
and the ``Verdict``) and ``verdict`` (the health figures the gate acts on).
Pure computation: it imports nothing of the package but ``errors``. The
package exports what the module ``gate_middleware.judge`` exported before
the layers.
"""

from gate_middleware.judge.statistics import *  # noqa: F403
from gate_middleware.judge.statistics import __all__ as __all__
