"""Compatibility name for bench/agent_cost.py, which imports make_pki from here; the CA lives in
testkit/pki.py (import it from there)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.pki import make_pki  # noqa: E402

__all__ = ["make_pki"]
