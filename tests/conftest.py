"""Suite-wide settings.

Every model in the tests is tiny: at that size torch's intra-op threads cost more in
synchronisation than they save, and on a shared 2-core CI machine they made single
steps up to 10x slower. One thread also keeps results independent of the core count.
"""

import torch

torch.set_num_threads(1)
