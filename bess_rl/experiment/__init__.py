"""Config to run folder: config schema, factories, the task function, run folder, checkpoints, hardware."""
