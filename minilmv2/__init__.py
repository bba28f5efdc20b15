"""minilmv2: exact, fast MiniLMv2 multi-head self-attention relation distillation."""

from minilmv2.distiller import MiniLM, MiniLMOutput
from minilmv2.student import build_student, student_config_from_teacher

__all__ = ["MiniLM", "MiniLMOutput", "build_student", "student_config_from_teacher"]
__version__ = "0.1.0"
