"""One torch thread per test process: CI runs two pytest-xdist workers on two cores, and two workers with torch's
default of two threads each oversubscribe them; small kernels (a float64 depthwise conv1d) then spin-wait for
hundreds of milliseconds instead of a tenth of one. Tests that need a thread count set their own."""

import torch

torch.set_num_threads(1)
