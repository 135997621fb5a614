"""Stable-Baselines3 drop-ins and the only CUDA-graph code: fast SAC, fast PPO/A2C, graph capture, tensor lr."""
