"""Settings: one dataclass per group (`settings`), and their reading from YAML and the CLI
(`loading`). The dataclasses are the only place a default lives."""

from kdflow.config.checks import (
    AUGMENTATIONS,
    check_image_size,
    check_tracking_uri,
    option_name,
)
from kdflow.config.loading import build_config, field_docs, load_config, parse_input_shape
from kdflow.config.settings import (
    BUILTIN_PREFIX,
    KD_LOSSES,
    LM_TOP_K,
    SECTIONS,
    TASKS,
    DataConfig,
    DistillConfig,
    GateConfig,
    RegistryConfig,
    RunConfig,
    TeacherConfig,
)

__all__ = [
    "AUGMENTATIONS",
    "BUILTIN_PREFIX",
    "KD_LOSSES",
    "LM_TOP_K",
    "SECTIONS",
    "TASKS",
    "DataConfig",
    "DistillConfig",
    "GateConfig",
    "RegistryConfig",
    "RunConfig",
    "TeacherConfig",
    "build_config",
    "check_image_size",
    "check_tracking_uri",
    "field_docs",
    "load_config",
    "option_name",
    "parse_input_shape",
]
