"""Policies: which ops pass, how severe each rule is, and justified exceptions.

``load_policy("default" | "strict" | "path/to/policy.toml")`` returns a
:class:`~modelwarden.policy.interface.Policy`.
"""

from __future__ import annotations

import os

from modelwarden.errors import PolicyError
from modelwarden.policy.interface import Ignore, Policy

__all__ = ["Ignore", "Policy", "PolicyError", "load_policy"]


def load_policy(name_or_path: "str | os.PathLike[str] | Policy | None" = None) -> Policy:
    """A built-in profile by name, a user TOML policy by path, or ``policy`` itself.

    ``None`` means the ``default`` profile.  A name that is neither a profile
    nor an existing file is a :class:`PolicyError`.
    """
    from modelwarden.policy.profiles import PROFILE_NAMES, profile

    if name_or_path is None:
        name_or_path = "default"
    if isinstance(name_or_path, Policy):
        return name_or_path
    text = os.fspath(name_or_path)
    builtin = profile(text)
    if builtin is not None:  # profile names win over same-named files
        return builtin
    looks_like_path = os.sep in text or "/" in text or text.endswith(".toml") or os.path.exists(text)
    if not looks_like_path:
        raise PolicyError(
            f"unknown policy {text!r}: expected a profile ({', '.join(PROFILE_NAMES)}) or a path to a TOML file"
        )
    from modelwarden.policy.loader import load_policy_file

    return load_policy_file(text)
