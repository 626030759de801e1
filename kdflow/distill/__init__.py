"""Distillation: tasks, losses, teacher targets and their cache, the loop, checkpoints, the
Ray runtime, the driver and the cluster job."""
