"""Run by torchrun in test_ddp.py: train with DDP on CPU (gloo), save this rank's weights."""
import json
import os
import sys

from safetensors.torch import save_file

from crossfuse.config import parse_config
from crossfuse.engine import train

raw = json.loads(sys.argv[1])
result = train(parse_config(raw))
state = {k: v.contiguous() for k, v in result.predictor.model.state_dict().items()}
save_file(state, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.safetensors"))
