"""The one place a training phase's parallel mode is chosen.

Several processes run data parallel by hand unless the launcher asked for DeepSpeed ZeRO
(everlearn.parallel.zero) or the model was sharded with FSDP (everlearn.parallel.fsdp); one
process runs :class:`~everlearn.parallel.local.Local`. The training loop then calls the chosen
object's methods the same way in every mode.
"""

from __future__ import annotations

from everlearn.parallel import fsdp, zero
from everlearn.parallel.data_parallel import DataParallel
from everlearn.parallel.local import Local


def backend_for(model, accelerator) -> Local:
    """The parallel mode of a phase on ``model``. Under FSDP the model is put back into its
    sharded state first: a unit that does not reshard after forward stays gathered after an
    evaluation pass, and the optimizer must hold the sharded parameters."""
    sharded = fsdp.is_sharded(model)
    if sharded:
        fsdp.reshard(model)
    if accelerator.num_processes == 1:
        return Local(accelerator, model)
    if zero.requested():
        return zero.ZeRO(accelerator, model)
    if sharded:
        return fsdp.Sharded(accelerator, model)
    return DataParallel(accelerator, model)
