"""The base every package shares: atomic writes, seed derivation, confidence intervals, lazy
package attributes.

Standard library and numpy only, so the skill library's import API (``from skills import
SkillLibrary``) and every layer above can use it without pulling in anything else.
"""

from .files import fsync_dir, write_atomic, write_json_atomic, write_text_atomic
from .intervals import STATISTIC, mean_ci, student_t_cdf, student_t_quantile
from .modules import lazy_attributes
from .seeds import derive_seed, legacy_stream_seed

__all__ = [
    "STATISTIC",
    "derive_seed",
    "fsync_dir",
    "lazy_attributes",
    "legacy_stream_seed",
    "mean_ci",
    "student_t_cdf",
    "student_t_quantile",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
