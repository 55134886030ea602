"""Compatibility name for tests/test_agent_tls.py, which imports make_pki from here; the CA lives in
testkit/pki.py (import it from there)."""

from testkit.pki import make_pki

__all__ = ["make_pki"]
