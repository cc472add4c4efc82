"""``ArchSpec``: the JSON description that rebuilds a skill's network. It is
:class:`ssm.spec.PolicySpec` itself (see there for the format); this module keeps the name.

Specs read from a library's manifest are untrusted: the library turns their ``ValueError`` s into
:class:`~skills.errors.SkillLibraryError` s that name the manifest.
"""

from __future__ import annotations

from ssm.spec import NETWORK, PolicySpec, check_space, is_image, space_to_json

ArchSpec = PolicySpec

__all__ = ["NETWORK", "ArchSpec", "check_space", "is_image", "space_to_json"]
