"""Run by torchrun in the DDP and multi-node tests: train with DDP on CPU (gloo), save this rank's
weights. CF_TEST_RESUME=1 continues from the run's checkpoint; CF_TEST_DIE="RANK:EPOCH" kills
that rank's process right after that epoch (its checkpoint written), as a lost node would."""
import json
import os
import sys

from safetensors.torch import save_file

from crossfuse.config import parse_config
from crossfuse.engine import train


class DieAfter:
    def __init__(self, spec: str):
        rank, epoch = spec.split(":")
        self.rank, self.epoch = int(rank), int(epoch)

    def on_epoch_end(self, trainer, state):
        if int(os.environ["RANK"]) == self.rank and state["epoch"] == self.epoch:
            os._exit(17)


raw = json.loads(sys.argv[1])
callbacks = [DieAfter(os.environ["CF_TEST_DIE"])] if os.environ.get("CF_TEST_DIE") else []
result = train(parse_config(raw), resume=os.environ.get("CF_TEST_RESUME") == "1", callbacks=callbacks)
state = {k: v.contiguous() for k, v in result.predictor.model.state_dict().items()}
save_file(state, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.safetensors"))
