"""Reinforcement learning from rollouts: sampling with the current policy, rewards."""
