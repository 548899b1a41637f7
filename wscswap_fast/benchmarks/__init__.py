"""The benchmark behind `wscswap bench`: each op against eager PyTorch, torch.compile and the
tools' baselines, with achieved bandwidth against this machine's measured copy bandwidth."""
