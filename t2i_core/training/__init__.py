"""Training: what a run is asked (config), the loop (trainer), the files that make it resumable (state), runs in
several processes (launch), and the command line (cli)."""
from .config import LR_SCHEDULES, Progress, TrainCallbacks, TrainConfig, TrainResult
from .state import TrainingError
from .trainer import Trainer, train

__all__ = ["LR_SCHEDULES", "Progress", "TrainCallbacks", "TrainConfig", "TrainResult", "TrainingError", "Trainer",
           "train"]
