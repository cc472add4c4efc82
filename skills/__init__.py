"""Skill library and curiosity-driven skill discovery.

The import API needs only torch, numpy and safetensors (no gymnasium, no training code)::

    from skills import SkillLibrary

    lib = SkillLibrary.open("path/to/library")
    skill = lib.get(lib.nearest(query_embedding, k=1)[0][0])
    action, state = skill.act(obs)            # numpy in, numpy out; deterministic by default

- :class:`SkillLibrary`: add/get/remove/list, k-NN over embeddings, metadata queries; safetensors
  files with checksums and a JSON manifest, atomic writes, safe concurrent writers.
- :class:`Skill`: a loaded skill; :class:`ArchSpec` (``ssm.PolicySpec``): the JSON that rebuilds
  its network (``ssm.SequencePolicy.from_spec``).
- :mod:`skills.compose`: options, a hierarchical skill selector, skills as initialisations.

Discovery and training modules are imported explicitly: :mod:`skills.curiosity` (RND and ICM
reward plugins; torch only), and, needing gymnasium and ``metarl``, :mod:`skills.intrinsic`
(reward and skill-code vector-env wrappers, PPO with plugins), :mod:`skills.diayn`,
:mod:`skills.extract` (policies and task runs -> library entries), :mod:`skills.hierarchy`
(training a skill selector with PPO) and :mod:`skills.envs` (point env, sparse maze).
"""

from .compose import Option, OptionRunner, SkillSelector, init_params_from_skill
from .errors import SkillFileError, SkillLibraryError, SkillNotFoundError
from .library import SCHEMA_VERSION, SkillLibrary
from .network import SkillNetwork
from .skill import Skill, SkillInfo, SkillState
from .spec import ArchSpec

__all__ = [
    "SCHEMA_VERSION",
    "ArchSpec",
    "Option",
    "OptionRunner",
    "Skill",
    "SkillFileError",
    "SkillInfo",
    "SkillLibrary",
    "SkillLibraryError",
    "SkillNetwork",
    "SkillNotFoundError",
    "SkillSelector",
    "SkillState",
    "init_params_from_skill",
]
