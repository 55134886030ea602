"""Filter `fleet_bcrypt`: a bcrypt hash for an exporter-toolkit web config (basic_auth_users).

Ansible's own password_hash needs passlib, which is unmaintained and fails with bcrypt >= 4.1.
This uses the bcrypt package directly. The salt is derived from a seed (the play passes the host
and user name) and the password, so a rerun renders the same hash and the web config stays
unchanged (idempotent) while two hosts or two users never share a salt.
"""

from __future__ import annotations

import hashlib

from ansible.errors import AnsibleFilterError

# bcrypt's own base64 alphabet (not RFC 4648's).
BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def bcrypt_base64(data: bytes) -> str:
    """OpenBSD's encode_base64: 16 salt bytes become the 22 characters bcrypt expects."""
    bits = int.from_bytes(data, "big") << 4  # pad 128 bits to 132 = 22 x 6
    chars = [BCRYPT_ALPHABET[(bits >> shift) & 0x3F] for shift in range(126, -1, -6)]
    return "".join(chars)


def fleet_bcrypt(password: str, seed: str, rounds: int = 10) -> str:
    try:
        import bcrypt  # noqa: PLC0415 - only where a login is hashed; a clear error otherwise
    except ImportError as err:
        raise AnsibleFilterError(
            "fleet_bcrypt needs the Python package bcrypt on the controller (pip install bcrypt)"
        ) from err
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError("fleet_bcrypt: the password must be a non-empty string")
    secret = password.encode("utf-8")
    if len(secret) > 72:
        raise AnsibleFilterError("fleet_bcrypt: bcrypt uses at most 72 bytes of a password; this one is longer")
    if not 4 <= int(rounds) <= 31:
        raise AnsibleFilterError(f"fleet_bcrypt: rounds must be 4-31, got {rounds}")
    salt_bytes = hashlib.sha256(f"{seed}\0{password}".encode()).digest()[:16]
    salt = f"$2b${int(rounds):02d}${bcrypt_base64(salt_bytes)}".encode("ascii")
    return bcrypt.hashpw(secret, salt).decode("ascii")


class FilterModule:
    def filters(self):
        return {"fleet_bcrypt": fleet_bcrypt}
