"""The private `transformers.Trainer` methods DistillationTrainer overrides, pinned: a transformers upgrade that
renames one, changes its parameters or stops calling it fails here, not at run time in a user's distillation."""

from __future__ import annotations

import inspect

from transformers import Trainer

from minilmv2.trainer import DistillationTrainer

# name -> the parameters transformers' own method takes (5.17 and 5.23 alike)
PINNED = {
    "_prepare_input": ["self", "data"],
    "_load_rng_state": ["self", "checkpoint"],
    "_init_training_state": [
        "self", "max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint", "trial"
    ],
    "_maybe_log_save_evaluate": [
        "self", "tr_loss", "grad_norm", "model", "trial", "epoch", "ignore_keys_for_eval", "start_time",
        "learning_rate",
    ],
    "_load_best_model": ["self"],
    "_save": ["self", "output_dir", "state_dict"],
    "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
    "_save_checkpoint": ["self", "model", "trial"],
}  # fmt: skip
# Private Trainer attributes DistillationTrainer reads.
PRIVATE_ATTRIBUTES_READ = ("_train_batch_size", "_get_output_dir")


def overridden_private_methods() -> set[str]:
    return {
        name
        for name, value in vars(DistillationTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }


def test_every_private_override_is_pinned():
    assert overridden_private_methods() == set(PINNED)


def test_the_pinned_methods_keep_their_parameters_and_are_still_called():
    source = inspect.getsource(Trainer)
    for name, parameters in PINNED.items():
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name
        assert f"self.{name}(" in source, f"Trainer no longer calls {name}"


def test_the_private_attributes_read_still_exist():
    source = inspect.getsource(Trainer)
    for name in PRIVATE_ATTRIBUTES_READ:
        assert f"self.{name}" in source, name
