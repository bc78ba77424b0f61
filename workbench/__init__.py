"""Sparsity workbench core: lab, data, models, activations, probes, CLI.

On small CPU machines busy OpenMP threads spin while they wait for each other and slow every
torch op several times over when the machine is shared; passive waiting avoids that. Set before
torch is imported (a user's own setting wins).
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
