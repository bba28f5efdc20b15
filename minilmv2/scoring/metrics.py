"""Load the repository's metrics as `evaluate` modules, offline.

Every metric the scripts report lives in `minilmv2/metrics/<name>/<name>.py`, inside the package: an
`evaluate.Metric` subclass with the inputs and outputs of the hub module of the same name where one exists
(glue, squad, squad_v2, rouge, sacrebleu, ...). The hub's copies cannot be fetched offline, but `evaluate.load`
accepts a local folder, so the scripts read

    metric = load_metric("squad_v2")                  # = evaluate.load(".../minilmv2/metrics/squad_v2")
    metric = load_metric("glue", config_name="mrpc")  # = evaluate.load(".../minilmv2/metrics/glue", "mrpc")

the way Hugging Face's examples read `evaluate.load("squad_v2")`. A module may import only installed
packages (evaluate checks every import line, and misreads `import a, b` written on one line).
"""

from __future__ import annotations

from pathlib import Path

from minilmv2.errors import UsageError

# Package data: shipped with the package (installed or not); the checkout's top-level metrics/ links here.
METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"


def metric_path(name: str) -> Path:
    """The folder of metric `name`; UsageError naming the available ones when there is none."""
    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise UsageError(f"no metric {name!r} in {METRICS_DIR}; available: {', '.join(available_metrics())}")
    return folder


def available_metrics() -> list[str]:
    """Names of the metric modules shipped in metrics/."""
    if not METRICS_DIR.is_dir():
        return []
    return sorted(path.name for path in METRICS_DIR.iterdir() if (path / f"{path.name}.py").is_file())


def load_metric(name: str, config_name: str | None = None, **kwargs):
    """`evaluate.load` of the repository's module `metrics/<name>` (works with HF_HUB_OFFLINE=1).

    kwargs go to `evaluate.load` (e.g. experiment_id, num_process / process_id). keep_in_memory defaults to True:
    the scripts score predictions already gathered on every rank, and arrow cache files under ~/.cache would
    only add file locks shared with every other run on the machine.
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), config_name, **kwargs)
