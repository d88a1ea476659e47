"""npylstm: an LSTM from scratch, to be read, checked and timed."""

from .cell import GATES, step_backward, step_forward
from .gradcheck import GradcheckRow, assert_backward, check_backward, check_gradients, check_layer
from .interop import from_keras, from_torch, to_keras, to_torch_state_dict
from .lstm import LSTM
from .sequence import sequence_backward, sequence_forward

__version__ = "0.1.0"

# training toolkit
from .data import StreamBatches, chronological_split, make_windows, one_hot, pad_sequences, stream_batches
from .layers import Linear
from .losses import cross_entropy_loss, mse_loss
from .optim import SGD, Adam, clip_grad_norm
from .checkpoint import load
from .model import Sequential

# seed experiments: the gate recorder and its heatmaps
from .experiments import gate_activations, plot_gates

# GRU
from .gru import GRU
from .gru_cell import GRU_GATES, gru_step_backward, gru_step_forward
from .gru_sequence import gru_sequence_backward, gru_sequence_forward
