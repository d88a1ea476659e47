"""npylstm: an LSTM from scratch, to be read, checked and timed."""

from .cell import GATES, step_backward, step_forward
from .interop import from_keras, from_torch, to_keras, to_torch_state_dict
from .lstm import LSTM
from .sequence import sequence_backward, sequence_forward

__version__ = "0.1.0"
