"""Thread policy and start-up preparation."""

from __future__ import annotations

import torch

from seepview.core.retrain import gui_threads
from seepview.core.retrain.policy import training_thread


def test_prepare_for_training_freezes_the_gc_generation():
    import gc

    from seepview.core.retrain import prepare_for_training

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    prepare_for_training()
    assert gc.get_freeze_count() > 100_000  # torch and Qt's long-lived objects no longer swept
    gc.unfreeze()


def test_training_thread_gives_torch_its_threads_back():
    threads = torch.get_num_threads()
    with training_thread(nice=0):
        torch.set_num_threads(1)
    assert torch.get_num_threads() == threads
    assert gui_threads() >= 1
