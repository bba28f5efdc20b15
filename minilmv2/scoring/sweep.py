"""run_eval.sh's sweep: tasks x epochs x learning rates x seeds, one fine-tuning run per GPU at a time.

`bash run_eval.sh` is `python -m minilmv2.scoring.sweep`, configured by the same environment variables (see
run_eval.sh). The steps:

1. settings: every variable checked, then the model, the tasks' data and EXTRA_ARGS (each script's own start-up
   check, run once on the first cell of its kind): one line and exit status 2 for anything wrong, before a run.
2. the grid: one `Cell` per (task, epochs, learning rate, seed), its command at the recipe's batch (GLUE and the
   offline tasks 32; SQuAD 12 x 4 accumulation = 48, the seeds' 4 GPUs x 12 on one GPU). Its identity is the
   model's fingerprint (config and weight files, not their path) and every argument that changes the result: a
   run recorded with another identity is run again, never reported.
3. the runs: `PARALLEL` at a time, each with one entry of `GPUS` as its CUDA_VISIBLE_DEVICES (so a run sees one
   GPU: never DataParallel); without a GPU the runs share the CPU cores. A progress line after each run.
   Ctrl-C / SIGTERM stops every running run, marks it interrupted and exits 130 / 143; a rerun resumes.
4. the summary (minilmv2.scoring.sweep_summary): summary.csv/.md, runs.csv (with each run's GPU), heatmaps.

Exit status: 0 when every run finished, 1 when some failed, 2 for bad settings, 128 + signal when stopped.
Test hook: MINILMV2_VISIBLE_GPUS=n makes the sweep believe n GPUs are visible (the runs are not told).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from minilmv2.errors import UsageError, exit_on_usage_error
from minilmv2.scoring.cell_lock import HEARTBEAT_SECONDS, CellLock
from minilmv2.scoring.sweep_summary import RUN_RECORD, SQUAD_TASKS, check_sweep_model, check_sweep_tasks, summarise

REPO_DIR = Path(__file__).resolve().parents[2]
GLUE_GRID = ("2e-5 3e-5 4e-5 1e-5 1.5e-5", "3 5 10")  # (learning rates, epochs)
SQUAD_GRID = ("4e-5", "4")
GLUE_MAX_SEQ_LENGTH, SQUAD_MAX_SEQ_LENGTH = 128, 384
# The seeds' SQuAD batch was 4 GPUs x 12; one GPU keeps the total of 48 by accumulating 4 batches of 12.
SQUAD_BATCH, SQUAD_ACCUMULATION = 12, 4
GLUE_BATCH = 32
VISIBLE_GPUS_HOOK = "MINILMV2_VISIBLE_GPUS"
WAIT_SECONDS = 2.0  # between looks at cells another sweep is running
NUMBER = re.compile(r"^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$")


@dataclass(frozen=True)
class Settings:
    """run_eval.sh's variables, checked."""

    model_dir: Path
    tasks: list[str]
    grids: dict[str, tuple[list[str], list[str]]]  # task: (learning rates, epochs)
    seeds: list[str]
    glue_dir: str
    offline_data_dir: str
    squad_dir: str
    output_dir: Path
    extra_args: list[str]
    python: str
    overwrite: bool
    slots: list[str | None]  # one entry per concurrent run: a GPU id for CUDA_VISIBLE_DEVICES, or None (CPU)
    model_fingerprint: str
    max_seq_lengths: dict[str, int] = field(default_factory=dict)  # task family: the length its runs use


@dataclass
class Cell:
    """One fine-tuning run of the grid."""

    task: str
    learning_rate: str
    epochs: str
    seed: str
    run_dir: Path
    argv: list[str]  # the script and its arguments
    identity: dict
    batch: str  # the total batch, as the summary says it
    lock: CellLock | None = None  # held while it runs

    @property
    def label(self) -> str:
        return f"{self.task} lr {self.learning_rate} epochs {self.epochs} seed {self.seed}"

    @property
    def identity_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()


# ---- 1. settings -----------------------------------------------------------------------------------------------


def words(env: dict, name: str, default: str = "") -> list[str]:
    return env.get(name, default).split()


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the model's config.json and weight files (names and bytes): the same model wherever it lies."""
    from minilmv2.model_files import WEIGHT_FILES

    digest = hashlib.sha256()
    names = ["config.json", *sorted(name for name in WEIGHT_FILES if (model_dir / name).is_file())]
    names += sorted(path.name for path in model_dir.glob("model-*.safetensors"))
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(model_dir / name, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def visible_gpus(env: dict) -> list[str]:
    """The GPUs the caller sees: the entries of its CUDA_VISIBLE_DEVICES, else 0..n-1 (n from torch)."""
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return [entry.strip() for entry in env["CUDA_VISIBLE_DEVICES"].split(",") if entry.strip()]
    if env.get(VISIBLE_GPUS_HOOK):
        return [str(index) for index in range(int(env[VISIBLE_GPUS_HOOK]))]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def device_slots(env: dict) -> list[str | None]:
    """One entry per concurrent run, from GPUS and PARALLEL (see run_eval.sh)."""
    visible = visible_gpus(env)
    gpus = words(env, "GPUS") or visible
    for gpu in gpus:
        if gpu not in visible:
            seen = ", ".join(visible) if visible else "none"
            raise UsageError(f"GPUS names GPU {gpu}, which is not visible here (visible: {seen}); give some of those")
    parallel_text = env.get("PARALLEL", "").strip()
    if parallel_text and not (parallel_text.isdigit() and int(parallel_text) >= 1):
        raise UsageError(f"PARALLEL={parallel_text} must be a whole number of runs at a time, 1 or more")
    parallel = int(parallel_text) if parallel_text else max(len(gpus), 1)
    if not gpus:
        return [None] * parallel
    if parallel > len(gpus):
        print(f"note: PARALLEL={parallel} is more than the {len(gpus)} GPU(s) in GPUS; running {len(gpus)} at a time")
        parallel = len(gpus)
    return list(gpus[:parallel]) if parallel < len(gpus) else list(gpus)


def check_grid(rates: list[str], epochs: list[str], seeds: list[str]) -> None:
    # Zero is refused too: a run with no epochs or a zero learning rate would report the untrained model's score.
    for lr in rates:
        if not NUMBER.match(lr):
            raise UsageError(f"learning rate '{lr}' in LEARNING_RATES is not a positive number (e.g. 2e-5)")
        if float(lr) == 0:
            raise UsageError(f"learning rate '{lr}' in LEARNING_RATES is zero; a run would not train (e.g. 2e-5)")
    for value in epochs:
        if not re.match(r"^[0-9]*\.?[0-9]+$", value):
            raise UsageError(f"epochs '{value}' in EPOCHS is not a positive number (e.g. 3)")
        if float(value) == 0:
            raise UsageError(
                f"epochs '{value}' in EPOCHS is zero; a run would train nothing and report the untrained model's score"
            )
    for seed in seeds:
        if not seed.isdigit():
            raise UsageError(f"seed '{seed}' in SEEDS is not a non-negative integer")
    # A value given twice ("7 7", or "1e-3 0.001" in two folders) asks for one run twice: time spent for nothing, and
    # a seed median that would weigh that run double.
    for name, values, as_number in (("LEARNING_RATES", rates, float), ("EPOCHS", epochs, float), ("SEEDS", seeds, int)):
        for index, value in enumerate(values):
            twin = next((earlier for earlier in values[:index] if as_number(earlier) == as_number(value)), None)
            if twin is not None:
                same = f"'{value}' twice" if twin == value else f"'{twin}' and '{value}', the same value"
                raise UsageError(f"{name} gives {same}; give each value once")


def read_settings(env: dict) -> Settings:
    """Every variable checked (UsageError naming it); the model and the tasks' data checked too."""
    model_text = env.get("MODEL_DIR", "")
    if not model_text:
        raise UsageError(
            "MODEL_DIR is not set; set it to the model directory to fine-tune (e.g. the distilled student)"
        )
    check_sweep_model(model_text)
    model_dir = Path(model_text)
    tasks, seeds = words(env, "TASKS", "qnli qqp rte sst2 mnli"), words(env, "SEEDS", "42")
    if not tasks:
        raise UsageError("TASKS is empty; give at least one task")
    if not seeds:
        raise UsageError("SEEDS is empty; give at least one value")
    grids = {}
    for task in tasks:
        default_rates, default_epochs = SQUAD_GRID if task in SQUAD_TASKS else GLUE_GRID
        # Unset or empty: the task's default grid; set (to anything but blanks): every task's.
        rates = words(env, "LEARNING_RATES") if env.get("LEARNING_RATES") else default_rates.split()
        epochs = words(env, "EPOCHS") if env.get("EPOCHS") else default_epochs.split()
        if not rates:
            raise UsageError("LEARNING_RATES is blank; give at least one value or unset it")
        if not epochs:
            raise UsageError("EPOCHS is blank; give at least one value or unset it")
        check_grid(rates, epochs, seeds)
        grids[task] = (rates, epochs)
    glue_dir, offline_dir, squad_dir = (env.get(name, "") for name in ("GLUE_DIR", "OFFLINE_DATA_DIR", "SQUAD_DIR"))
    check_sweep_tasks(tasks, glue_dir=glue_dir, offline_data_dir=offline_dir, squad_dir=squad_dir)
    fingerprint = model_fingerprint(model_dir)
    # A different model never shares a default output folder (and its records would not match anyway).
    output_dir = Path(env.get("OUTPUT_DIR") or f"runs/eval/{model_dir.resolve().name}-{fingerprint[:8]}")
    default_python = REPO_DIR / ".venv" / "bin" / "python"
    return Settings(
        model_dir=model_dir,
        tasks=tasks,
        grids=grids,
        seeds=seeds,
        glue_dir=glue_dir,
        offline_data_dir=offline_dir,
        squad_dir=squad_dir,
        output_dir=output_dir,
        extra_args=words(env, "EXTRA_ARGS"),
        python=env.get("PYTHON") or (str(default_python) if default_python.is_file() else "python3"),
        overwrite=env.get("OVERWRITE", "0") == "1",
        slots=device_slots(env),
        model_fingerprint=fingerprint,
        max_seq_lengths=max_seq_lengths(model_dir, words(env, "EXTRA_ARGS"), tasks),
    )


def max_seq_lengths(model_dir: Path, extra_args: list[str], tasks: list[str]) -> dict[str, int]:
    """The sequence length of GLUE-like and SQuAD runs: the recipe's, capped at the model's positions (said in a
    note); one asked for in EXTRA_ARGS beyond them is refused."""
    from types import SimpleNamespace

    from minilmv2.encoder_layouts import usable_positions

    config = json.loads((model_dir / "config.json").read_text())  # the raw file: no transformers start-up
    positions = usable_positions(SimpleNamespace(**{"pad_token_id": None, **config}))
    asked = None
    for index, word in enumerate(extra_args):
        if word.split("=")[0] in ("--max_seq_length", "--max-seq-length"):
            asked = word.split("=", 1)[1] if "=" in word else (extra_args[index + 1 : index + 2] or [""])[0]
    if asked is not None and positions and asked.isdigit() and int(asked) > positions:
        raise UsageError(
            f"EXTRA_ARGS asks for --max_seq_length {asked}, but the model has {positions} positions; give at most "
            f"{positions}"
        )
    lengths = {"glue": GLUE_MAX_SEQ_LENGTH, "squad": SQUAD_MAX_SEQ_LENGTH}
    families = {"squad" if task in SQUAD_TASKS else "glue" for task in tasks}
    for family, length in list(lengths.items()):
        if positions and length > positions and asked is None and family in families:
            print(f"note: the model has {positions} positions: {family} runs use --max_seq_length {positions} "
                  f"instead of the recipe's {length}")  # fmt: skip
            lengths[family] = positions
    return lengths


# ---- 2. the grid -------------------------------------------------------------------------------------------------


def script_arguments(settings: Settings, task: str) -> tuple[list[str], str]:
    """(the script and its recipe's arguments for `task`, the total batch in words)."""
    if task in SQUAD_TASKS:
        version, version_args = ("v2.0", ["--version_2_with_negative"]) if task == "squad_v2" else ("v1.1", [])
        if settings.squad_dir:
            data = ["--data_dir", settings.squad_dir, "--train_file", f"train-{version}.json",
                    "--predict_file", f"dev-{version}.json"]  # fmt: skip
        else:
            data = ["--dataset_name", task]
        argv = [str(REPO_DIR / "hf_run_squad.py"), *data, *version_args,
                "--max_seq_length", str(settings.max_seq_lengths["squad"]), "--doc_stride", "128",
                "--per_device_train_batch_size", str(SQUAD_BATCH), "--gradient_accumulation_steps",
                str(SQUAD_ACCUMULATION), "--per_device_eval_batch_size", "64"]  # fmt: skip
        return argv, f"{SQUAD_BATCH} x {SQUAD_ACCUMULATION} accumulated = {SQUAD_BATCH * SQUAD_ACCUMULATION}"
    from minilmv2.scoring.sentence_tasks import OFFLINE_TASKS

    if task in OFFLINE_TASKS:
        data = ["--offline_data_dir", settings.offline_data_dir] if settings.offline_data_dir else []
    else:
        data = ["--glue_dir", settings.glue_dir] if settings.glue_dir else []
    argv = [str(REPO_DIR / "hf_run_evaluation.py"), "--task_name", task, *data,
            "--max_seq_length", str(settings.max_seq_lengths["glue"]),
            "--per_device_train_batch_size", str(GLUE_BATCH), "--per_device_eval_batch_size", "64",
            "--eval_strategy", "epoch"]  # fmt: skip
    return argv, str(GLUE_BATCH)


def make_grid(settings: Settings) -> list[Cell]:
    """Every cell, task by task, then epochs, learning rates and seeds (run_eval.sh's order)."""
    cells = []
    for task in settings.tasks:
        script, batch = script_arguments(settings, task)
        rates, epochs_list = settings.grids[task]
        for epochs, lr, seed in itertools.product(epochs_list, rates, settings.seeds):
            run_dir = settings.output_dir / task / f"lr{lr}_ep{epochs}_seed{seed}"
            run_args = ["--do_train", "--do_eval", "--learning_rate", lr, "--num_train_epochs", epochs,
                        "--warmup_steps", "0.1", "--weight_decay", "0.01", "--seed", seed, "--save_strategy", "no",
                        "--save_final_model", "false", "--logging_steps", "50"]  # fmt: skip
            # EXTRA_ARGS last: later flags win, so they override the recipe. The identity leaves out the paths of
            # the model (its fingerprint stands for it) and of the run.
            arguments = [*script[1:], *run_args, *settings.extra_args]
            identity = {"model": settings.model_fingerprint, "script": Path(script[0]).name, "arguments": arguments}
            argv = [script[0], "--model_name_or_path", str(settings.model_dir), "--output_dir", str(run_dir),
                    "--overwrite_output_dir", *arguments]  # fmt: skip
            cells.append(Cell(task, lr, epochs, seed, run_dir, argv, identity, batch))
    return cells


def read_record(cell: Cell) -> dict | None:
    """The cell's sweep_run.json, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((cell.run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None


def finished(cell: Cell) -> bool:
    """Whether the cell has a result of this identity (ok or failed): what the summary waits for."""
    record = read_record(cell) or {}
    return record.get("identity_sha256") == cell.identity_sha256 and record.get("status") in ("ok", "failed")


def kept(cell: Cell, overwrite: bool) -> tuple[bool, str]:
    """(whether the cell's earlier result stands, why not when there is one)."""
    record = read_record(cell)
    if record is None or overwrite or record.get("status") != "ok":
        return False, ""
    if record.get("identity_sha256") != cell.identity_sha256:
        return False, "its earlier result was made with another model or other arguments: run again"
    return True, ""


def check_extra_args(settings: Settings, cells: list[Cell]) -> None:
    """Each script's own start-up check, once, on the first cell of its kind (EXTRA_ARGS included): a bad flag is
    one line before the sweep instead of a failure in every run."""
    seen = set()
    for cell in cells:
        script = cell.argv[0]
        if script in seen:
            continue
        seen.add(script)
        env = {**os.environ, "MINILMV2_VALIDATE_ONLY": "1"}
        if settings.slots[0] is not None:
            env["CUDA_VISIBLE_DEVICES"] = settings.slots[0]
        done = subprocess.run([settings.python, *cell.argv], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
            detail = lines[-1].removeprefix("error: ") if lines else (done.stderr.strip().splitlines() or ["?"])[-1]
            raise UsageError(f"{Path(script).name} refuses the sweep's arguments (EXTRA_ARGS included): {detail}")


# ---- 3. the runs -------------------------------------------------------------------------------------------------


@dataclass
class Running:
    cell: Cell
    slot: str | None
    process: subprocess.Popen
    started: float
    pump: threading.Thread
    lock: CellLock


class Sweep:
    """Runs cells on slots; the signal handlers stop it."""

    def __init__(self, settings: Settings, cells: list[Cell]):
        self.settings, self.cells = settings, cells
        self.stop_signal: int | None = None
        self.durations: list[float] = []
        self.counts = {"ok": 0, "failed": 0, "kept": 0, "interrupted": 0, "elsewhere": 0}
        self.running: list[Running] = []
        self.started_at = time.time()  # records written after this by another sweep are its runs, not to redo

    def child_env(self, slot: str | None) -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot  # verbatim: SLURM's ids and GPU UUIDs work
        elif len(self.settings.slots) > 1:  # CPU runs side by side share the cores
            threads = str(max(1, (os.cpu_count() or 1) // len(self.settings.slots)))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return env

    def take_next(self, pending: list[Cell]) -> Cell | None:
        """The first pending cell whose lock this sweep gets and that nobody has run meanwhile; None if none."""
        for cell in list(pending):
            lock = CellLock(cell.run_dir)
            if not lock.take():
                continue  # another sweep (or array task) runs it now
            pending.remove(cell)
            if self.done_elsewhere(cell):
                lock.release()
                self.counts["elsewhere"] += 1
                print(f"{cell.label}: run by another sweep meanwhile, kept", flush=True)
                continue
            cell.lock = lock
            return cell
        return None

    def done_elsewhere(self, cell: Cell) -> bool:
        """Whether another sweep sharing OUTPUT_DIR ran this cell (ok or failed) since this one started."""
        try:
            recent = (cell.run_dir / RUN_RECORD).stat().st_mtime >= self.started_at - 1
        except OSError:
            return False
        return recent and finished(cell)

    def start(self, cell: Cell, slot: str | None) -> Running:
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        (cell.run_dir / RUN_RECORD).unlink(missing_ok=True)
        log = open(cell.run_dir / "run.log", "w", encoding="utf-8")  # noqa: SIM115 (closed by the pump)
        process = subprocess.Popen(
            [self.settings.python, *cell.argv], env=self.child_env(slot), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
        )  # fmt: skip
        echo = len(self.settings.slots) == 1  # one run at a time: its output on the terminal too, as before

        def pump():
            with log:
                for line in process.stdout:
                    log.write(line)
                    if echo:
                        sys.stdout.write(line)
                        sys.stdout.flush()

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        where = f" on GPU {slot}" if slot is not None else ""
        print(f"start {cell.label}{where} -> {cell.run_dir}", flush=True)
        return Running(cell, slot, process, time.monotonic(), thread, cell.lock)

    def finish(self, run: Running) -> None:
        run.pump.join()
        code = run.process.returncode
        seconds = time.monotonic() - run.started
        if code == 0:
            status = "ok"  # also when it finished just as the sweep was being stopped
        elif self.stop_signal is not None or code in (-signal.SIGINT, -signal.SIGTERM, 130, 143):
            status = "interrupted"
        else:
            status = "failed"
        self.counts[status] += 1
        if status == "ok":
            self.durations.append(seconds)
        record = {"task": run.cell.task, "learning_rate": run.cell.learning_rate, "epochs": run.cell.epochs,
                  "seed": run.cell.seed, "status": status, "exit_code": code, "device": run.slot or "cpu",
                  "batch": run.cell.batch, "seconds": round(seconds, 1), "identity": run.cell.identity,
                  "identity_sha256": run.cell.identity_sha256}  # fmt: skip
        (run.cell.run_dir / RUN_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        run.lock.release()  # after the record: a sweep that takes the lock next finds the cell done
        where = f" on GPU {run.slot}" if run.slot is not None else ""
        extra = f" (exit {code}), see {run.cell.run_dir / 'run.log'}" if status == "failed" else ""
        print(f"{status} {run.cell.label}{where} in {seconds:.0f} s{extra}", flush=True)

    def progress(self, total: int, running: int, left: int) -> None:
        done = self.counts["ok"] + self.counts["failed"] + self.counts["kept"] + self.counts["elsewhere"]
        eta = ""
        if self.durations and left + running:
            remaining = sum(self.durations) / len(self.durations) * (left + running) / len(self.settings.slots)
            eta = f", about {remaining / 60:.0f} min left" if remaining >= 60 else f", about {remaining:.0f} s left"
        print(f"[{done}/{total} done, {running} running, {self.counts['failed']} failed{eta}]", flush=True)

    def run(self) -> int:
        """Every cell (those kept from earlier skipped); the exit status."""
        total = len(self.cells)
        queue = []
        for cell in self.cells:
            keep, why = kept(cell, self.settings.overwrite)
            if keep:
                self.counts["kept"] += 1
                print(f"{cell.label}: finished earlier, kept (the same model and arguments)")
            else:
                if why:
                    print(f"note: {cell.label}: {why}")
                queue.append(cell)
        free, running = list(self.settings.slots), self.running
        beat, said_waiting = time.monotonic(), False
        while (queue and self.stop_signal is None) or running:
            while queue and free and self.stop_signal is None:
                cell = self.take_next(queue)
                if cell is None:
                    break
                running.append(self.start(cell, free.pop(0)))
            if queue and not running and self.stop_signal is None:
                if (
                    not said_waiting
                ):  # every cell left is locked by another sweep: wait for it (or its lock to go stale)
                    print(f"waiting for {len(queue)} cell(s) that another sweep is running", flush=True)
                    said_waiting = True
                time.sleep(WAIT_SECONDS)
                continue
            time.sleep(0.1)
            if time.monotonic() - beat > HEARTBEAT_SECONDS:
                for run in running:
                    run.lock.heartbeat()
                beat = time.monotonic()
            for run in [run for run in running if run.process.poll() is not None]:
                running.remove(run)
                free.append(run.slot)  # the next cell takes the GPU this one freed
                self.finish(run)
                self.progress(total, len(running), len(queue))
        return 128 + self.stop_signal if self.stop_signal is not None else (1 if self.counts["failed"] else 0)

    def stop(self, signum, frame) -> None:
        """Ctrl-C / SIGTERM: no new run; each running one gets the signal (they run in their own sessions)."""
        if self.stop_signal is None:
            print(f"\nstopping: signal {signum}; the running runs are stopped and marked interrupted", flush=True)
        self.stop_signal = signum
        for run in list(self.running):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.process.pid, signal.SIGTERM)


def array_share(cells: list[Cell], env: dict) -> list[Cell]:
    """This SLURM array task's cells (every n-th from its index), or all of them outside an array."""
    count = int(env.get("SLURM_ARRAY_TASK_COUNT") or 1)
    if count <= 1:
        return cells
    index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
    share = cells[index::count]
    print(f"array task {index + 1} of {count}: {len(share)} of the grid's {len(cells)} cells", flush=True)
    return share


@exit_on_usage_error
def main() -> int:
    env = dict(os.environ)
    settings = read_settings(env)
    grid = make_grid(settings)
    check_extra_args(settings, grid)
    cells = array_share(grid, env)
    where = f"GPU(s) {' '.join(s for s in settings.slots)}" if settings.slots[0] is not None else "the CPU"
    print(f"Sweep: {len(cells)} runs of {settings.model_dir} on {' '.join(settings.tasks)} -> {settings.output_dir}, "
          f"{len(settings.slots)} at a time on {where}", flush=True)  # fmt: skip
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(settings, cells)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, sweep.stop)
    status = sweep.run()
    unfinished = [cell for cell in grid if not finished(cell)]
    if unfinished and len(cells) < len(grid):
        print(f"summary deferred: {len(unfinished)} of {len(grid)} cells are not finished yet (other array tasks); "
              "the last task writes it, or run: python -m minilmv2.scoring.sweep_summary "
              f"{settings.output_dir} --tasks {' '.join(settings.tasks)}")  # fmt: skip
        return status
    summarise(settings.output_dir, settings.model_dir.resolve().name, settings.tasks)
    print((settings.output_dir / "summary.md").read_text(encoding="utf-8"))
    if sweep.counts["failed"]:
        print(f"{sweep.counts['failed']} of {len(cells)} runs failed; they are marked failed in "
              f"{settings.output_dir / 'summary.md'}")  # fmt: skip
    if sweep.stop_signal is not None:
        print(f"stopped by signal {sweep.stop_signal}: {sweep.counts['interrupted']} run(s) interrupted; run the same "
              "command again to resume")  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
