import torch

# The CI and development machines share a few cores between many processes; one intra-op thread
# per test process avoids the spin-waiting that made a 40-step run ten times slower with two.
torch.set_num_threads(1)
