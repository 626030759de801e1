"""A tabular run never imports the model libraries of text models (transformers and
tokenizers cost seconds to import), and nothing imports torchvision or timm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from pathlib import Path
import pipelines.cli
from kdflow.config import RunConfig, TeacherConfig
from kdflow.preflight import check_run
from kdflow.distill.driver import train_teacher
from kdflow.models.sources import load_saved
check_run(RunConfig())
train_teacher(sys.argv[1], "mlp:hidden=8", TeacherConfig(teacher_epochs=1), 0, Path(sys.argv[2]))
load_saved(sys.argv[2])
print(sorted(m for m in ("transformers", "tokenizers", "torchvision", "timm") if m in sys.modules))
"""


def test_a_tabular_run_imports_no_text_model_library(digits_dataset: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(digits_dataset), str(tmp_path / "teacher")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
