"""One training run: its folder (:mod:`.rundir`), the trainer (:mod:`.trainer`) and its phases'
parts (distributed setup, budget and schedule, evaluation, stop signals), checkpoints, resuming,
MLflow tracking, and sampling from a trained run."""
