"""Pure model code: config, layers, attention, Mixture-of-Experts, transformer, sharding, FLOPs."""
